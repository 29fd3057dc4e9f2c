//! Perisai.
