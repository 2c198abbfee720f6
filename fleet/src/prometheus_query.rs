//! The controller's Prometheus client: one instant query over the HTTP
//! API (`/api/v1/query`), its answer as a [`Reading`].

use std::time::Duration;

use serde_json::Value;

use crate::model::prometheus::Reading;

/// A query gets this long, connecting included; then Prometheus counts as
/// unreachable for this measurement.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Asks `address` (`http://host:port`) for `query` now. Blocking: run it
/// off the async threads.
pub fn instant(address: &str, query: &str) -> Reading {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(3)))
        .timeout_global(Some(TIMEOUT))
        // Prometheus says what is wrong with a query in a 400 or 422 body.
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let mut response = match agent.get(&url).query("query", query).call() {
        Ok(response) => response,
        Err(ureq::Error::Io(io)) => return Reading::Unreachable(format!("{address}: {io}")),
        Err(other) => return Reading::Unreachable(format!("{address}: {other}")),
    };
    let status = response.status();
    let body = match response.body_mut().read_to_string() {
        Ok(body) => body,
        Err(error) => return Reading::Unreachable(format!("{address}: {error}")),
    };
    match serde_json::from_str::<Value>(&body) {
        Ok(answer) => read_answer(&answer),
        Err(_) if status.is_server_error() || status.is_client_error() => {
            Reading::Error(format!("HTTP {status} from {address}"))
        }
        Err(_) => Reading::Unreachable(format!("{address} did not answer as Prometheus does")),
    }
}

/// The query API's JSON: `{"status":"success","data":{"resultType":...}}`
/// or `{"status":"error","error":...}`.
fn read_answer(answer: &Value) -> Reading {
    if answer["status"] != "success" {
        let kind = answer["errorType"].as_str().unwrap_or("error");
        let error = answer["error"].as_str().unwrap_or("no reason given");
        return Reading::Error(format!("{kind}: {error}"));
    }
    let data = &answer["data"];
    let number = |sample: &Value| -> f64 {
        sample[1]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or(f64::NAN)
    };
    match data["resultType"].as_str() {
        Some("vector") => Reading::Values(
            data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|series| (labels(&series["metric"]), number(&series["value"])))
                .collect(),
        ),
        Some("scalar") => Reading::Values(vec![(String::new(), number(&data["result"]))]),
        Some(other) => Reading::Error(format!(
            "the query returns a {other}; a gate needs an instant vector or a scalar"
        )),
        None => Reading::Error("the answer names no result type".into()),
    }
}

/// `{a="1", b="2"}` (empty for a series without labels).
fn labels(metric: &Value) -> String {
    let Some(map) = metric.as_object().filter(|map| !map.is_empty()) else {
        return String::new();
    };
    let pairs: Vec<String> = map
        .iter()
        .map(|(name, value)| format!("{name}={}", value))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_read_as_prometheus_writes_them() {
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"cluster": "c1"}, "value": [1.7e9, "0.25"]},
            {"metric": {}, "value": [1.7e9, "NaN"]},
        ]}});
        let Reading::Values(series) = read_answer(&vector) else {
            panic!("a vector reads as values");
        };
        assert_eq!(series[0], (r#"{cluster="c1"}"#.to_string(), 0.25));
        assert!(series[1].0.is_empty() && series[1].1.is_nan());
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}});
        assert_eq!(
            read_answer(&scalar),
            Reading::Values(vec![(String::new(), 3.0)])
        );
        let error =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 4"});
        assert_eq!(
            read_answer(&error),
            Reading::Error("bad_data: parse error at char 4".into())
        );
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(matches!(read_answer(&matrix), Reading::Error(e) if e.contains("matrix")));
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let reading = instant(&format!("http://127.0.0.1:{port}"), "up");
        assert!(
            matches!(&reading, Reading::Unreachable(why) if why.contains("refused")),
            "{reading:?}"
        );
    }
}
