//! How every database connection notices a dead peer, on both ends.
//!
//! A peer that goes silent (a NAT that forgets the flow, a dropped route, a
//! stuck proxy: no RST, no FIN) leaves a connection that looks open. Our
//! side sets TCP keepalives and `tcp_user_timeout` on its socket (see
//! [`apply`]), so a query waiting for an answer fails within
//! `database.tcp_user_timeout` and an idle connection within the keepalive
//! time. The server's side of the same connection gets the same numbers
//! through the session's options ([`server_options`]: `tcp_keepalives_*`
//! and `tcp_user_timeout` are settings any role may set for its own
//! session), so the server ends a session whose client vanished, and with
//! it the advisory locks that session held. Over a Unix socket the server
//! ignores them. What a standby does about a leader that is silent but not
//! yet dead is `fence`'s business.

use crate::config::TcpSettings;

/// Sets keepalives and `tcp_user_timeout` on a client configuration.
pub fn apply(pg: &mut postgres::Config, tcp: &TcpSettings) {
    pg.keepalives(true)
        .keepalives_idle(tcp.keepalives_idle)
        .keepalives_interval(tcp.keepalives_interval)
        .keepalives_retries(tcp.keepalives_count);
    if !tcp.user_timeout.is_zero() {
        pg.tcp_user_timeout(tcp.user_timeout);
    }
}

/// The `-c name=value` options that give the server's end of the session
/// the same keepalives and user timeout (seconds and milliseconds, the
/// units of these settings; 0 = the system's default).
pub fn server_options(tcp: &TcpSettings) -> String {
    format!(
        "-c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={} -c tcp_user_timeout={}",
        tcp.keepalives_idle.as_secs(),
        tcp.keepalives_interval.as_secs(),
        tcp.keepalives_count,
        tcp.user_timeout.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn defaults() -> TcpSettings {
        crate::config::Config::for_url("postgres://u@127.0.0.1/db")
            .database
            .tcp
    }

    #[test]
    fn the_defaults_notice_a_dead_peer_within_half_a_minute() {
        let tcp = defaults();
        assert!(tcp.dead_after() <= Duration::from_secs(30), "{tcp:?}");
        assert!(tcp.user_timeout <= Duration::from_secs(30), "{tcp:?}");
        assert!(!tcp.user_timeout.is_zero());
    }

    #[test]
    fn the_client_and_the_server_get_the_same_numbers() {
        let tcp = defaults();
        let mut pg = postgres::Config::new();
        apply(&mut pg, &tcp);
        assert_eq!(pg.get_keepalives_idle(), tcp.keepalives_idle);
        assert_eq!(pg.get_tcp_user_timeout(), Some(&tcp.user_timeout));
        assert_eq!(
            server_options(&tcp),
            "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 -c tcp_user_timeout=30000"
        );
    }

    #[test]
    fn a_zero_user_timeout_leaves_the_systems_default() {
        let tcp = TcpSettings {
            user_timeout: Duration::ZERO,
            ..defaults()
        };
        let mut pg = postgres::Config::new();
        apply(&mut pg, &tcp);
        assert_eq!(pg.get_tcp_user_timeout(), None);
        assert!(server_options(&tcp).ends_with("tcp_user_timeout=0"));
    }
}
