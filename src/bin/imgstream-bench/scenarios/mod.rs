//! One file per measurement. The default run: [`sizes`] (each image size against its
//! ceilings), [`large`] (32 MiB images through the claim check), [`scaling`], [`rebalance`] and [`backlog`]; `--soak` runs [`soak`], `--browse` runs
//! [`browse`].

pub mod backlog;
pub mod browse;
pub mod large;
pub mod rebalance;
pub mod scaling;
pub mod sizes;
pub mod soak;
