//! The topoccl console: a web page over a topology file and a running job.
//!
//! Pure parts ([`layout`], [`health`], [`prom`], [`matrix`], [`live`], [`calls`]) compute what is
//! drawn from the model and the figures; [`whatif`] asks the simulator; [`server`] is the
//! HTTP shell (axum): the JSON API, the token, the job poller and the embedded page.

pub mod calls;
pub mod health;
pub mod layout;
pub mod live;
pub mod matrix;
pub mod prom;
pub mod server;
pub mod whatif;
