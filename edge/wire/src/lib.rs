//! One definition of every type that crosses a process boundary between the edge, the controller
//! and the dashboard. The producer serializes these types and the consumer deserializes the same
//! ones, so a field one side sends and the other cannot read (a `null` where a list was expected)
//! is a compile-time change, not a page that breaks at run time.
//!
//! Serde types and small pure rules only: no I/O, no heavy dependencies.
pub mod audit;
pub mod body;
pub mod controller;
pub mod edge;
pub mod mcp;
pub mod names;
