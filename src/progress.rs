//! Progress bars and tracing setup shared by the commands.
