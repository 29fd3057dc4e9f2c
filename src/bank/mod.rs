//! Hash banks: entries loaded from files, matched by exact hash or PDQ distance.

pub mod pdq_index;
