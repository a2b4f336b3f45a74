mod cli;
mod failures;
mod gc;
mod isolated;
mod shared;
mod trees;
mod vite;
