//! The host-guest protocol: versioned hello, length-prefixed frames, requests, responses, events, bulk streams.
