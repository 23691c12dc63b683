//! What the filter says at the edge: RFC 6750 challenges and RFC 9728
//! metadata (`challenge`), CORS for browser clients (`cors`), scopes per MCP
//! tool (`tools`), and what it records of each decision (`metrics`, `audit`).

pub mod audit;
pub mod challenge;
pub mod cors;
pub mod metrics;
pub mod tools;
