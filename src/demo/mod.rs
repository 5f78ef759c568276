//! `patchloop demo`'s parts, kept out of the controller: the example fleet
//! applied to a cluster ([`fleet`]), a simulated executor that plays the
//! Jobs a control plane without kubelet never runs ([`executor`]), and what
//! the demo prints while it waits ([`progress`], pure).

pub mod executor;
pub mod fleet;
pub mod progress;
