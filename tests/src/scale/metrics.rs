//! etcd's own figures, read from its Prometheus endpoint and `/proc`: requests it received per
//! gRPC method, and the CPU time it used.

/// Sum of `grpc_server_msg_received_total` per gRPC method (stream messages count one by one,
/// so lease keepalives on one stream are each a request).
pub async fn received_by_method(endpoint: &str) -> std::collections::BTreeMap<String, f64> {
    let text = reqwest::get(format!("{endpoint}/metrics"))
        .await
        .expect("etcd /metrics")
        .text()
        .await
        .unwrap_or_default();
    parse_received(&text)
}

pub fn parse_received(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_method = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches('"').to_string())
            .unwrap_or_default();
        *by_method.entry(method).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    by_method
}

/// User + system CPU seconds `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_are_summed_per_method() {
        let text = "# HELP x\n\
            grpc_server_msg_received_total{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"} 120\n\
            grpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
            grpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"other\",grpc_type=\"unary\"} 3\n\
            grpc_server_started_total{grpc_method=\"Txn\"} 99\n";
        let m = super::parse_received(text);
        assert_eq!(m["LeaseKeepAlive"], 120.0);
        assert_eq!(m["Txn"], 10.0);
        assert_eq!(m.len(), 2);
    }
}
