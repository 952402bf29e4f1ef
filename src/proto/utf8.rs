//! utf8
