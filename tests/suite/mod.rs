mod cli;
mod failures;
mod isolated;
mod trees;
mod vite;
