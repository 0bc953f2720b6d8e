//! One file per measurement. The default run: [`sizes`] (each image size against its
//! ceilings), [`large`] (32 MiB images through the claim check), [`scaling`], [`rebalance`] and
//! [`backlog`]; `--soak` runs [`soak`], `--browse` runs [`browse`]. `--only erasure-check` and
//! `--only retain-latency` run the measurements of [`lifetime`], which no other run includes.

pub mod backlog;
pub mod browse;
pub mod large;
pub mod lifetime;
pub mod rebalance;
pub mod scaling;
pub mod sizes;
pub mod soak;
