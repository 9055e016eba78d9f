//! Unit tests for every validation rule.
