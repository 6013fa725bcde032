//! Path and method → [`Route`]: the request's class, whether it is shadowed, and its failure policy.
//!
//! First matching prefix wins (in file order); no match → class `general`.

use http::Method;

use crate::config::{Class, OnError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub class: Class,
    /// Decide and report, never refuse.
    pub shadow: bool,
    /// The storage failure policy for this route (the route's own, else `storage.on_error`).
    pub on_error: OnError,
}

#[derive(Clone, Debug)]
pub struct RouteTable {
    entries: Vec<(String, Vec<Method>, Route)>,
    fallback: Route,
}

impl RouteTable {
    /// `entries`: (prefix, methods (empty: any), route) in match order.
    pub fn new(entries: Vec<(String, Vec<Method>, Route)>, default_on_error: OnError) -> RouteTable {
        RouteTable { entries, fallback: Route { class: Class::General, shadow: false, on_error: default_on_error } }
    }

    pub fn classify(&self, method: &Method, path: &str) -> &Route {
        self.entries
            .iter()
            .find(|(prefix, methods, _)| {
                path.starts_with(prefix.as_str()) && (methods.is_empty() || methods.contains(method))
            })
            .map_or(&self.fallback, |(_, _, route)| route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_prefix_and_method_wins() {
        let r = |class| Route { class, shadow: false, on_error: OnError::Local };
        let table = RouteTable::new(
            vec![
                ("/api/v1/export".into(), vec![Method::POST], r(Class::DataExport)),
                ("/api/".into(), vec![], r(Class::Api)),
                ("/health".into(), vec![], r(Class::Exempt)),
            ],
            OnError::Local,
        );
        assert_eq!(table.classify(&Method::POST, "/api/v1/export/csv").class, Class::DataExport);
        assert_eq!(table.classify(&Method::GET, "/api/v1/export/csv").class, Class::Api);
        assert_eq!(table.classify(&Method::GET, "/health").class, Class::Exempt);
        assert_eq!(table.classify(&Method::GET, "/api").class, Class::General);
        assert_eq!(table.classify(&Method::GET, "/").class, Class::General);
    }
}
