//! The edge's operations routes as the dashboard reads them.
