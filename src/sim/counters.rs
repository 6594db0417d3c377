//! Request counters of the simulated API, by endpoint and status.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Status label of a request whose connection was closed without a response.
pub const DROPPED: &str = "dropped";

// Counts by endpoint, then by status. Nested maps let a hit look up both keys as `&str`
// and allocate only for a new pair.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    counts: HashMap<String, HashMap<String, u64>>,
}

impl Counters {
    pub fn record(&mut self, endpoint: &str, status: &str) {
        let by_status = match self.counts.get_mut(endpoint) {
            Some(by_status) => by_status,
            None => self.counts.entry(endpoint.to_owned()).or_default(),
        };
        match by_status.get_mut(status) {
            Some(count) => *count += 1,
            None => {
                by_status.insert(status.to_owned(), 1);
            }
        }
    }

    pub fn clear(&mut self) {
        self.counts.clear();
    }

    pub fn report(&self) -> RequestReport {
        let mut requests: Vec<RequestCount> = self
            .counts
            .iter()
            .flat_map(|(endpoint, by_status)| {
                by_status.iter().map(move |(status, count)| RequestCount {
                    endpoint: endpoint.clone(),
                    status: status.clone(),
                    count: *count,
                })
            })
            .collect();
        requests.sort_by(|a, b| (&a.endpoint, &a.status).cmp(&(&b.endpoint, &b.status)));
        let mut by_endpoint = BTreeMap::new();
        for request in &requests {
            *by_endpoint.entry(request.endpoint.clone()).or_insert(0) += request.count;
        }
        RequestReport {
            total: requests.iter().map(|request| request.count).sum(),
            by_endpoint,
            requests,
        }
    }
}

/// Body of `GET /_sim/requests`: the `/api/v0` requests received since start or the last
/// reset. Endpoints are method and route relative to `/api/v0`, for example
/// `PUT /users/{username}`; requests that matched no route count as `unmatched`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestReport {
    pub total: u64,
    pub by_endpoint: BTreeMap<String, u64>,
    pub requests: Vec<RequestCount>,
}

/// The number of requests to one endpoint that ended with one status: an HTTP status
/// code such as `204`, or `dropped`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestCount {
    pub endpoint: String,
    pub status: String,
    pub count: u64,
}

impl RequestReport {
    /// Returns the number of requests to `endpoint`, whatever their status.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.by_endpoint.get(endpoint).copied().unwrap_or(0)
    }

    /// Returns the number of requests to `endpoint` that ended with `status`.
    pub fn count_with_status(&self, endpoint: &str, status: &str) -> u64 {
        self.requests
            .iter()
            .filter(|request| request.endpoint == endpoint && request.status == status)
            .map(|request| request.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sums_by_endpoint_and_status() {
        let mut counters = Counters::default();
        counters.record("GET /users", "200");
        counters.record("GET /users", "200");
        counters.record("GET /users", "500");
        counters.record("PUT /synchronizations", DROPPED);
        let report = counters.report();
        assert_eq!(report.total, 4);
        assert_eq!(report.count("GET /users"), 3);
        assert_eq!(report.count_with_status("GET /users", "200"), 2);
        assert_eq!(
            report.count_with_status("PUT /synchronizations", DROPPED),
            1
        );
        assert_eq!(report.count("DELETE /users/{username}"), 0);
        counters.clear();
        assert_eq!(counters.report(), RequestReport::default());
    }
}
