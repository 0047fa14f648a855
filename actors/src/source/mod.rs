//! Event sources: actors that turn outside events into submitted messages. Each one submits
//! through the [`Dispatcher`](crate::Dispatcher), so admission control, validation and the ledger
//! apply to every source alike. The HTTP source lives in the server crate (it needs actix-web).

pub mod timer;
