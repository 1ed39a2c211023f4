//! The retriever HTTP service. Built in the retriever issue; the crate exists
//! now so the workspace layout is final.
