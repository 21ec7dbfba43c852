//! The configuration as the admin listener's `GET /config` shows it: what serves (listeners,
//! upstreams, routes, filters and where their files are), never a secret. Filters'
//! `config` and `vm_config` are left out whole (they are where keys and tokens live), as are
//! the admin token, private keys and client certificates; only their presence and size show.

use serde_json::{json, Value};

use super::model::{
    AccessLog, Builtin, Config, Endpoint, Filter, HostPattern, Listener, Origin, PathPattern,
    Route, Upstream,
};

/// The JSON view of `config`.
pub fn summary(config: &Config) -> Value {
    json!({
        "source": config.source.display().to_string(),
        "listeners": config.listeners.iter().map(listener).collect::<Vec<_>>(),
        "workers": config.workers,
        "upstreams": config.upstreams.iter().map(|u| upstream(u, &config.filters)).collect::<Vec<_>>(),
        "routes": config.routes.iter().map(|r| route(r, config)).collect::<Vec<_>>(),
        "filters": config.filters.iter().map(filter).collect::<Vec<_>>(),
        "cache": config.cache.as_ref().map(|cache| json!({
            "memory": cache.memory,
            "max_object": cache.max_object,
            "disk": cache.disk.as_ref().map(|disk| disk.path.display().to_string()),
        })),
        "geo": config.geo.as_ref().map(|geo| geo.database.display().to_string()),
        "admin": config.admin.as_ref().map(|admin| json!({
            "address": admin.address.to_string(),
            "token": if admin.token.is_some() { "set" } else { "none" },
        })),
        "access_log": match &config.access_log {
            AccessLog::Off => "off".to_string(),
            AccessLog::Stdout => "stdout".to_string(),
            AccessLog::Stderr => "stderr".to_string(),
            AccessLog::File(path) => path.display().to_string(),
        },
        "access_log_properties": &*config.access_log_properties,
    })
}

fn listener(listener: &Listener) -> Value {
    json!({
        "address": listener.address.to_string(),
        "redirect_https": listener.redirect_https,
        "tls": listener.tls.as_ref().map(|tls| json!({
            "certificates": tls
                .certificates
                .iter()
                .map(|c| c.cert.display().to_string())
                .collect::<Vec<_>>(),
            "min_version": format!("{:?}", tls.min_version),
            "alpn": tls.alpn.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
        })),
    })
}

fn upstream(upstream: &Upstream, filters: &[Filter]) -> Value {
    let endpoints: Vec<String> = match &upstream.origin {
        Origin::Endpoints(endpoints) => endpoints.iter().map(endpoint).collect(),
        Origin::Builtin(Builtin::Echo) => vec!["builtin echo".to_string()],
        Origin::Builtin(Builtin::Filters(ids)) => {
            let names: Vec<&str> = ids
                .iter()
                .filter_map(|id| filters.get(id.0).map(|f| f.name.as_str()))
                .collect();
            vec![format!("builtin filters: {}", names.join(", "))]
        }
    };
    json!({
        "name": upstream.name,
        "endpoints": endpoints,
        "load_balancing": format!("{:?}", upstream.balancing),
        "protocol": format!("{:?}", upstream.protocol),
        "health_check": upstream.health_check.as_ref().map(|hc| hc.path.clone()),
        "tls": upstream.tls.as_ref().map(|tls| json!({
            "sni": tls.sni,
            "verify": tls.verify,
            "ca": tls.ca.as_ref().map_or("system roots", |_| "configured"),
            "client_certificate": tls.client_identity.is_some(),
        })),
    })
}

fn endpoint(endpoint: &Endpoint) -> String {
    let address = endpoint.addr.to_string();
    if endpoint.addr.ip().to_string() == endpoint.host {
        address
    } else {
        format!("{} ({address})", endpoint.host)
    }
}

fn route(route: &Route, config: &Config) -> Value {
    let matcher = &route.matcher;
    json!({
        "name": route.name,
        "host": matcher.host.as_ref().map(|host| match host {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Suffix(parent) => format!("*{parent}"),
        }),
        "path": matcher.path.as_ref().map(|path| match path {
            PathPattern::Prefix(prefix) => format!("prefix {prefix}"),
            PathPattern::Exact(exact) => format!("exact {exact}"),
            PathPattern::Regex(regex) => format!("regex {}", regex.as_str()),
        }),
        "methods": matcher.methods.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>(),
        "headers": matcher.headers.iter().map(|(name, _)| name.as_str().to_string()).collect::<Vec<_>>(),
        "upstream": config.upstreams.get(route.upstream.0).map(|u| u.name.clone()),
        "filters": route
            .filters
            .iter()
            .filter_map(|id| config.filters.get(id.0).map(|f| f.name.clone()))
            .collect::<Vec<_>>(),
        "cache": route.cache.is_some(),
        "timeout_ms": route.timeout.as_millis() as u64,
    })
}

fn filter(filter: &Filter) -> Value {
    json!({
        "name": filter.name,
        "module": filter.module.display().to_string(),
        "vm_id": filter.vm_id,
        "root_id": filter.root_id,
        "isolation": format!("{:?}", filter.isolation),
        "on_error": format!("{:?}", filter.on_error),
        "config": format!("<{} bytes, not shown>", filter.config.len()),
        "vm_config": format!("<{} bytes, not shown>", filter.vm_config.len()),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_shows_what_serves_and_no_secret() {
        let text = "listeners: [{address: 127.0.0.1:8080}]\nadmin: {token: 'sixteen-characters-secret'}\nupstreams: {u: {endpoints: ['localhost:9000']}}\nfilters: {auth: {module: m.wasm, config: {key: 'hunter2-signing-key'}}}\nroutes: [{name: api, match: {path_prefix: /api/, headers: {x-api-key: 'header-secret'}}, upstream: u, filters: [auth]}]\n";
        // The module is not compiled here: validation only checks that the file is there.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"\0asm").unwrap();
        let config = match super::super::from_str(text, &dir.path().join("t.yaml")) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        let shown = super::summary(&config).to_string();
        for secret in ["sixteen-characters-secret", "hunter2", "header-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for shown_part in [
            "\"address\":\"127.0.0.1:8080\"",
            "\"token\":\"set\"",
            "localhost (",
            "\"path\":\"prefix /api/\"",
            "\"headers\":[\"x-api-key\"]",
            "\"filters\":[\"auth\"]",
            "bytes, not shown",
        ] {
            assert!(shown.contains(shown_part), "no {shown_part} in {shown}");
        }
    }
}
