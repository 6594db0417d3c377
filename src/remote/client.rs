use futures::future::BoxFuture;

use super::{ListError, Lister, Lists, RemoteSync};
use crate::mytimetable::{self, Client};

impl Lister for Client {
    // Both lists are requested at once, so the snapshot's `fetched_at` (taken before either
    // request) is at most one request latency older than either list.
    fn list(&self) -> BoxFuture<'_, Result<Lists, ListError>> {
        Box::pin(async move {
            let (users, synchronizations) =
                tokio::try_join!(self.list_users(), self.list_synchronizations())
                    .map_err(list_error)?;
            let synchronizations = synchronizations
                .into_iter()
                .map(|sync| RemoteSync {
                    id: sync.id,
                    username: sync.username,
                    type_: sync.type_,
                })
                .collect();
            Ok(Lists {
                users,
                synchronizations,
            })
        })
    }
}

fn list_error(error: mytimetable::Error) -> ListError {
    ListError {
        unauthorized: matches!(error, mytimetable::Error::Unauthorized),
        message: error.to_string(),
    }
}
