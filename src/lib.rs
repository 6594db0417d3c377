//! calsync-operator: a Kubernetes operator that provisions MyTimetable calendar
//! synchronizations from `CalendarUser` and `CalendarSync` resources.

pub mod resources;
