//! Authentication failures seen in backends' answers, counted per client address for
//! `limits.per_client.auth_failures_per_sec` ([`crate::limits::ClientTable::auth_failure`]):
//! HAProxy's `http-request track-sc0 src` with a deny on `sc_http_err_rate`, narrowed to the
//! answers that mean "this token is not good", so a client that keeps trying forged tokens is
//! refused at the edge (429) instead of costing a node a request or a WebSocket setup each time.
//!
//! What counts: a backend's 401 or 403 (plain HTTP, or an upgrade refused with a status), and a
//! `101` core marks with `x-quiz-auth: refused`. The contract answers a bad token on an upgrade
//! with a 101 and then a close 4001 (a browser cannot read the status of a failed handshake),
//! so only the marker tells that 101 apart; core sets it (core/src/http.rs) and edge-lb removes
//! it here, before the head reaches the client. A header rather than the close frame: the
//! frame may arrive in a later read, and edge-lb does not parse frames before the splice.

use std::net::IpAddr;

use crate::cluster::Cluster;

/// The internal header on a `101` whose token core refused (and its value).
pub const MARKER: &str = "x-quiz-auth";
const REFUSED: &[u8] = b"refused";

/// A status that says the request's credentials were refused.
fn is_failure_status(status: u16) -> bool {
    matches!(status, 401 | 403)
}

/// Remove every `x-quiz-auth` line from the response head at the start of `buf` (which may
/// continue with frame bytes); true when one said `refused`. Allocation-free when there is
/// none (every legitimate upgrade).
pub fn take_marker(buf: &mut Vec<u8>) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let mut refused = false;
    let mut cuts = Vec::new();
    let mut at = 0;
    // Every line of the head with its CRLF, the final empty one excluded.
    for line in buf[..end + 2].split_inclusive(|b| *b == b'\n') {
        let start = at;
        at += line.len();
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(MARKER.as_bytes())
        {
            refused |= line[colon + 1..].trim_ascii().eq_ignore_ascii_case(REFUSED);
            cuts.push(start..at);
        }
    }
    for cut in cuts.into_iter().rev() {
        buf.drain(cut);
    }
    refused
}

/// Count an authentication failure of `client` when `failed` (`via`: `http` or `upgrade`, the
/// label of `edge_lb_auth_failures_total`).
fn count(cluster: &Cluster, client: Option<IpAddr>, failed: bool, via: &str) {
    if !failed {
        return;
    }
    cluster
        .metrics
        .auth_failures
        .with_label_values(&[via])
        .inc();
    if let Some(ip) = client {
        cluster.clients.auth_failure(ip);
    }
}

/// A backend answered `client`'s upgrade with the head at the start of `resp`: the marker is
/// removed, and a marked 101 or a 401/403 counted.
pub fn upgrade_answered(
    cluster: &Cluster,
    client: Option<IpAddr>,
    status: Option<u16>,
    resp: &mut Vec<u8>,
) {
    let marked = take_marker(resp);
    let failed = marked || status.is_some_and(is_failure_status);
    count(cluster, client, failed, "upgrade");
}

/// A backend answered `client`'s plain HTTP request with `head`: a 401/403 is counted, and
/// the marker (core sets it on upgrades only) removed all the same.
pub fn http_answered(
    cluster: &Cluster,
    client: Option<IpAddr>,
    head: &mut pingora_http::ResponseHeader,
) {
    let marked = head
        .remove_header(MARKER)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(REFUSED));
    let failed = marked || is_failure_status(head.status.as_u16());
    count(cluster, client, failed, "http");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_removed_wherever_it_is_and_frames_behind_are_kept() {
        let frame = [0x88u8, 0x0b, 0x0f, 0xa1, b'b', b'a', b'd'];
        let mut r = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nX-Quiz-Auth:  refused \r\nsec-websocket-accept: k\r\n\r\n".to_vec();
        r.extend_from_slice(&frame);
        assert!(take_marker(&mut r));
        let mut want = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: k\r\n\r\n".to_vec();
        want.extend_from_slice(&frame);
        assert_eq!(r, want);
        // Last header line, another value: removed, not a refusal.
        let mut r = b"HTTP/1.1 101 OK\r\nx-quiz-auth: other\r\n\r\n".to_vec();
        assert!(!take_marker(&mut r));
        assert_eq!(r, b"HTTP/1.1 101 OK\r\n\r\n");
        // No marker, or the name only in a frame behind the head: untouched.
        let mut r = b"HTTP/1.1 101 OK\r\nupgrade: websocket\r\n\r\nx-quiz-auth: refused".to_vec();
        let before = r.clone();
        assert!(!take_marker(&mut r));
        assert_eq!(r, before);
        let mut r = b"HTTP/1.1 101 OK\r\nx-quiz-auth: refused".to_vec();
        assert!(!take_marker(&mut r), "an incomplete head is not read");
    }
}
