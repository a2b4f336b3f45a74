//! Bad input and CLI conventions.
