//! Wire formats that several layers write or read, with no framework in
//! them: [`sse`], the Server-Sent Events frame of a reply's event. Like
//! `domain`, this module imports nothing else of the crate.

pub mod sse;
