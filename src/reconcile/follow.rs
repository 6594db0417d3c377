//! The ownership watch of a replica that does not lead, so that its read-only API can
//! filter managed and unmanaged entries.

use std::future::ready;

use futures::StreamExt;

use super::controllers::{publish_ownership, watch_events};
use super::observe::Kind;
use super::{Index, Runtime};
use crate::resources::{CalendarSync, CalendarUser};

impl Runtime {
    /// Watches CalendarUsers and CalendarSyncs only to keep the remote view's ownership index
    /// current; it writes nothing. Runs until dropped.
    pub async fn run_ownership_watch(&self) {
        let index = Index::default();
        let health = &self.telemetry.health;
        // The reconciles that the index returns for each event are not needed here.
        let users = watch_events::<CalendarUser>(&self.kube, &self.config).for_each(|event| {
            health.observe_watch(CalendarUser::KIND, &event);
            if let Ok(event) = &event {
                index.user_event(event);
            }
            ready(())
        });
        let syncs = watch_events::<CalendarSync>(&self.kube, &self.config).for_each(|event| {
            health.observe_watch(CalendarSync::KIND, &event);
            if let Ok(event) = &event {
                index.sync_event(event);
            }
            ready(())
        });
        tracing::info!("Watching resources for the ownership index");
        tokio::select! {
            () = users => health.watch_ended(CalendarUser::KIND),
            () = syncs => health.watch_ended(CalendarSync::KIND),
            () = publish_ownership(&index, &self.view) => {}
        }
    }
}
