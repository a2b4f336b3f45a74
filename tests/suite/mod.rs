mod cli;
mod failures;
mod isolated;
mod shared;
mod trees;
mod vite;
