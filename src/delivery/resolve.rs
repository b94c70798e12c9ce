//! Name resolution for webhook requests, plugged into the `ureq` agent.
//!
//! `ureq` resolves the host on every call, before it looks for a pooled
//! keep-alive connection, and when a timeout is set (ours always is) its
//! default resolver starts a thread per lookup so that it can give up in
//! time. For a busy reconciler that is a thread start per delivery, even to
//! an IP address. This resolver:
//!
//! - answers an IP-address host at once, without a lookup;
//! - keeps a host name's addresses for [`CACHE_TTL`] (what curl does by
//!   default), so deliveries to the same endpoint look it up at most once a
//!   minute; failed lookups are not kept;
//! - does every real lookup through `ureq`'s own resolver, with its timeout.
//!
//! It is also where the SSRF guard ([`super::ssrf::Guard`]) checks every
//! address a request would connect to, at connect time: the *resolved*
//! addresses, not the host text (`http://2130706433/` is a host name to this
//! module and resolves to 127.0.0.1), on every request, cached or not, so a
//! name that resolves or later re-resolves to a refused address is refused.
//! A host with any refused address is refused as a whole (a name that mixes
//! public and internal answers is not trusted with either). The error is an
//! I/O error of kind `PermissionDenied` carrying [`super::ssrf::Refused`];
//! `http` recognises it ([`refusal`]). The agent uses no proxy: a proxy
//! would resolve the target itself, past the guard.
//!
//! ureq's resolver interface is outside its semver promise, so Cargo.toml
//! pins ureq to 3.5.x.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use super::ssrf::{Guard, Refused};

/// How long a looked-up host name's addresses are reused.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Most host names kept; past that the cache starts afresh.
const CACHE_MAX_HOSTS: usize = 4096;

/// The resolver of the delivery agent. See the module documentation.
#[derive(Debug, Default)]
pub struct CachingResolver {
    lookup: DefaultResolver,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
    guard: Guard,
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.resolve_unguarded(uri, config, timeout)?;
        for addr in addrs.iter() {
            self.guard
                .check(addr.ip())
                .map_err(|refused| io::Error::new(io::ErrorKind::PermissionDenied, refused))?;
        }
        Ok(addrs)
    }
}

/// The addresses `host` resolves to now, for checking a URL as it is typed
/// (`channel create`/`update`): empty when the lookup fails or takes longer
/// than `timeout` (the lookup thread then finishes on its own). Deliveries
/// resolve through [`CachingResolver`] instead.
pub fn lookup_now(host: &str, port: u16, timeout: Duration) -> Vec<IpAddr> {
    use std::net::ToSocketAddrs;
    if let Some(ip) = ip_literal(host) {
        return vec![ip];
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let target = (host.to_owned(), port);
    let spawned = std::thread::Builder::new()
        .name("url-lookup".into())
        .spawn(move || {
            let addrs: Vec<IpAddr> = target
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip()).collect())
                .unwrap_or_default();
            let _ = tx.send(addrs);
        });
    if spawned.is_err() {
        return Vec::new();
    }
    rx.recv_timeout(timeout).unwrap_or_default()
}

/// The guard's refusal inside a transport error, if that is what it is.
pub fn refusal(err: &ureq::Error) -> Option<&Refused> {
    match err {
        ureq::Error::Io(e) => e.get_ref()?.downcast_ref::<Refused>(),
        _ => None,
    }
}

impl CachingResolver {
    /// A resolver whose addresses must pass `guard`.
    pub fn new(guard: Guard) -> CachingResolver {
        CachingResolver {
            guard,
            ..CachingResolver::default()
        }
    }

    /// The addresses of `uri`'s host, before the guard looks at them.
    fn resolve_unguarded(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            // Not a full URL: let ureq's resolver say what is wrong.
            return self.lookup.resolve(uri, config, timeout);
        };
        let Some(port) = authority.port_u16().or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        }) else {
            return self.lookup.resolve(uri, config, timeout);
        };
        let host = authority.host();
        if let Some(ip) = ip_literal(host) {
            // The same address-family filter ureq's resolver applies.
            let addr = SocketAddr::new(ip, port);
            let Some(addr) = config.ip_family().keep_wanted(std::iter::once(addr)).next() else {
                return Err(ureq::Error::HostNotFound);
            };
            let mut addrs = self.empty();
            addrs.push(addr);
            return Ok(addrs);
        }
        let key = format!("{host}:{port}");
        let now = Instant::now();
        if let Some(addrs) = self.cached(&key, now) {
            return Ok(addrs);
        }
        let addrs = self.lookup.resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX_HOSTS {
                cache.clear();
            }
            cache.insert(key, (now, addrs.clone()));
        }
        Ok(addrs)
    }

    /// The kept addresses of `key` if they are younger than [`CACHE_TTL`].
    fn cached(&self, key: &str, now: Instant) -> Option<ResolvedSocketAddrs> {
        let cache = self.cache.lock().ok()?;
        let (at, addrs) = cache.get(key)?;
        (now.saturating_duration_since(*at) < CACHE_TTL).then(|| addrs.clone())
    }
}

/// The address a URL host names literally (`127.0.0.1`, `[::1]`), if it does.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose guard allows every address: these tests are about
    /// resolving and caching (no connection is made).
    fn open() -> CachingResolver {
        CachingResolver::new(Guard::new(vec![
            "0.0.0.0/0".parse().expect("net"),
            "::/0".parse().expect("net"),
        ]))
    }

    fn resolve(r: &CachingResolver, url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().expect("test URL");
        let config = ureq::config::Config::default();
        let timeout = NextTimeout {
            after: Duration::from_secs(5).into(),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        r.resolve(&uri, &config, timeout)
            .map(|a| a.iter().copied().collect())
    }

    #[test]
    fn ip_literals_are_answered_without_a_lookup() {
        let r = open();
        assert_eq!(
            resolve(&r, "http://127.0.0.1:8080/hook").expect("v4"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            resolve(&r, "https://[::1]/hook").expect("v6"),
            vec!["[::1]:443".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            resolve(&r, "http://10.1.2.3/").expect("default port"),
            vec!["10.1.2.3:80".parse::<SocketAddr>().expect("addr")]
        );
        assert!(r.cache.lock().expect("cache").is_empty());
    }

    #[test]
    fn ip_literals_honour_the_agents_address_family() {
        let r = open();
        let uri: Uri = "http://[::1]:80/".parse().expect("test URL");
        let v4_only = ureq::config::Config::builder()
            .ip_family(ureq::config::IpFamily::Ipv4Only)
            .build();
        let timeout = NextTimeout {
            after: Duration::from_secs(5).into(),
            reason: ureq::Timeout::Resolve,
            ..NextTimeout::default()
        };
        assert!(matches!(
            r.resolve(&uri, &v4_only, timeout),
            Err(ureq::Error::HostNotFound)
        ));
    }

    #[test]
    fn host_names_are_looked_up_once_and_kept() {
        let r = open();
        let first = resolve(&r, "http://localhost:9/x").expect("localhost resolves");
        assert!(!first.is_empty());
        assert!(first.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        assert!(r.cached("localhost:9", Instant::now()).is_some());
        // A kept entry past its age is not used.
        let later = Instant::now() + CACHE_TTL + Duration::from_secs(1);
        assert!(r.cached("localhost:9", later).is_none());
        assert_eq!(resolve(&r, "http://localhost:9/y").expect("again"), first);
    }

    #[test]
    fn failed_lookups_are_not_kept() {
        let r = open();
        assert!(resolve(&r, "http://no-such-host.invalid/").is_err());
        assert!(r.cache.lock().expect("cache").is_empty());
    }

    /// Every loopback notation: resolved (never connected) and refused by
    /// the default guard, naming the address and the key.
    #[test]
    fn the_guard_refuses_every_notation_of_loopback_by_default() {
        let r = CachingResolver::default();
        for (url, addr) in [
            ("http://127.0.0.1:9/", "127.0.0.1"),
            ("http://2130706433:9/", "127.0.0.1"),
            ("http://0x7f.1:9/", "127.0.0.1"),
            ("http://017700000001:9/", "127.0.0.1"),
            ("http://[::ffff:127.0.0.1]:9/", "::ffff:127.0.0.1"),
            ("http://[::1]:9/", "::1"),
            ("http://localhost:9/", ""),
        ] {
            let err = resolve(&r, url).expect_err(url);
            let refused = refusal(&err).unwrap_or_else(|| panic!("{url}: {err}"));
            assert!(refused.addr.to_string().contains(addr), "{url}: {refused}");
            let text = refused.to_string();
            assert!(text.contains("delivery.allow_networks"), "{text}");
            assert!(text.contains("loopback"), "{text}");
        }
        // A refused name is refused again from the cache.
        assert!(resolve(&r, "http://localhost:9/").is_err());
    }

    #[test]
    fn the_allow_list_lets_loopback_through() {
        let r = CachingResolver::new(Guard::new(vec![
            "127.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
        ]));
        for url in [
            "http://127.0.0.1:9/",
            "http://2130706433:9/",
            "http://0x7f.1:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://[::1]:9/",
            "http://localhost:9/",
        ] {
            let addrs = resolve(&r, url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(addrs.iter().all(|a| a.port() == 9), "{url}");
        }
        // Only 127.0.0.0/8 and ::1: other internal literals stay refused.
        for url in [
            "http://10.0.0.5:6379/",
            "http://169.254.169.254/latest/",
            "http://[fe80::1]/",
        ] {
            let err = resolve(&r, url).expect_err(url);
            assert!(refusal(&err).is_some(), "{url}: {err}");
        }
    }
}
