//! Registry and lock faults.
