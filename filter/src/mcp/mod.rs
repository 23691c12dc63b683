//! The MCP authorization edge beyond tokens: CORS for browser clients
//! (`cors`) and scopes required per tool (`tools`).

pub mod cors;
pub mod tools;
