mod cli;
mod failures;
mod gc;
mod isolated;
mod run;
mod shared;
mod trees;
mod vite;
