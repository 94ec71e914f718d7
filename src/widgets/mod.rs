//! Custom widgets: the console display and the graphs.

pub mod display;
pub mod graph;
