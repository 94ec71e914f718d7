//! Custom widgets: the console display, the graphs, and the error line under a form field.

pub mod display;
pub mod field_error;
pub mod graph;
