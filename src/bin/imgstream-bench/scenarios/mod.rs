//! One file per measurement. The default run: [`sizes`] (each image size against its
//! ceilings), [`scaling`], [`rebalance`] and [`backlog`]; `--soak` runs [`soak`], `--browse` runs
//! [`browse`].

pub mod backlog;
pub mod browse;
pub mod rebalance;
pub mod scaling;
pub mod sizes;
pub mod soak;
