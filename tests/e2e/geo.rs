//! Geolocation and the edge filters that use it: clients from the demo ranges (through a
//! trusted proxy's X-Forwarded-For) reach the origin for their region, untrusted
//! X-Forwarded-For is ignored, IPv6 works, and add-headers injects and templates headers.

use std::path::Path;

use edgeward_testkit::{client, filters, reqwest, Origin, Proxy};

use crate::support::{config, start_proxy};

fn demo_database() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/geo/demo.mmdb")
        .display()
        .to_string()
}

struct Regions {
    us: Origin,
    eu: Origin,
    apac: Origin,
}

impl Regions {
    async fn start() -> Regions {
        Regions {
            us: Origin::start("origin-us").await,
            eu: Origin::start("origin-eu").await,
            apac: Origin::start("origin-apac").await,
        }
    }

    /// A proxy routing by country, believing X-Forwarded-For from `trusted`.
    async fn proxy(&self, trusted: &str) -> Proxy {
        start_proxy(&config(
            r#"
listeners: [{address: "{{listen}}"}]
geo: {database: "$db", trusted_proxies: [$trusted]}
upstreams:
  origin-us: {endpoints: ["$us"]}
  origin-eu: {endpoints: ["$eu"]}
  origin-apac: {endpoints: ["$apac"]}
filters:
  geo:
    module: $geo_router
    config:
      countries: {JP: origin-apac, KR: origin-apac, SG: origin-apac, DE: origin-eu, FR: origin-eu, GB: origin-eu}
      continents: {OC: origin-apac}
      default: origin-us
      response_header: x-edge-country
routes: [{upstream: origin-us, filters: [geo]}]
"#,
            &[
                ("db", demo_database()),
                ("trusted", trusted.to_string()),
                ("us", self.us.addr().to_string()),
                ("eu", self.eu.addr().to_string()),
                ("apac", self.apac.addr().to_string()),
                ("geo_router", filters::GEO_ROUTER.to_string()),
            ],
        ))
        .await
    }
}

async fn from(proxy: &Proxy, forwarded_for: &str) -> (String, String) {
    let response = client::http1()
        .get(proxy.url("/where"))
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let country = response.headers()["x-edge-country"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    (body["origin"].as_str().unwrap().to_string(), country)
}

#[tokio::test]
async fn clients_reach_the_origin_of_their_region() {
    let regions = Regions::start().await;
    let proxy = regions.proxy("127.0.0.1/32, \"::1/128\"").await;
    for (client, origin, country) in [
        ("192.0.2.10", "origin-apac", "JP"),
        ("198.51.100.20", "origin-eu", "DE"),
        ("203.0.113.30", "origin-us", "US"),
        // IPv6: Singapore by country, Sydney by its continent (OC).
        ("2001:db8::1", "origin-apac", "SG"),
        ("2001:db8:8000::1", "origin-apac", "AU"),
        // Not in the database: the default origin.
        ("8.8.8.8", "origin-us", "unknown"),
        // A proxy chain: the right-most hop that is not a trusted proxy is the client.
        ("192.0.2.10, 198.51.100.20", "origin-eu", "DE"),
    ] {
        assert_eq!(
            from(&proxy, client).await,
            (origin.to_string(), country.to_string()),
            "client {client}"
        );
    }
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let regions = Regions::start().await;
    // 127.0.0.1 (the test client) is not trusted here: its X-Forwarded-For is a claim.
    let proxy = regions.proxy("10.0.0.0/8").await;
    assert_eq!(
        from(&proxy, "192.0.2.10").await,
        ("origin-us".to_string(), "unknown".to_string())
    );
    assert_eq!(regions.apac.hits(), 0);
}

#[tokio::test]
async fn add_headers_sets_adds_removes_and_templates_properties() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
geo: {database: "$db", trusted_proxies: [127.0.0.1/32]}
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  headers:
    module: $add_headers
    config:
      request:
        set: {x-edge: "1", x-client: "${source.effective_address}"}
        add: {x-trace: "${request.id}", x-agent: "agent=${request.headers.user-agent}"}
        remove: [x-internal-secret]
      response:
        set:
          x-served-by: edgeward
          x-edge-country: "${geo.country_code:-XX}"
          x-geo: "${geo.continent_code}/${geo.region_code}/${geo.city}/${geo.asn}/${geo.as_org}/${geo.latitude}/${geo.longitude}"
          x-status: "${response.code}"
          x-price: "$$5"
        remove: [x-origin]
routes: [{upstream: origin, filters: [headers]}]
"#,
        &[
            ("db", demo_database()),
            ("origin", origin.addr().to_string()),
            ("add_headers", filters::ADD_HEADERS.to_string()),
        ],
    ))
    .await;
    let get = |forwarded: Option<&'static str>| {
        let mut request = client::http1()
            .get(proxy.url("/status/201"))
            .header("user-agent", "tests")
            .header("x-request-id", "trace-7")
            .header("x-internal-secret", "hush")
            .header("x-trace", "from-client");
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        request.send()
    };
    let response: reqwest::Response = get(Some("192.0.2.10")).await.unwrap();
    assert_eq!(response.status(), 201);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("x-served-by").as_deref(), Some("edgeward"));
    assert_eq!(header("x-edge-country").as_deref(), Some("JP"));
    assert_eq!(
        header("x-geo").as_deref(),
        Some("AS/13/Tokyo/64500/Edgeward Demo JP/35.6895/139.6917")
    );
    assert_eq!(header("x-status").as_deref(), Some("201"));
    assert_eq!(header("x-price").as_deref(), Some("$5"));
    assert_eq!(header("x-origin"), None, "removed from the response");

    let seen = origin.last_request_headers();
    assert_eq!(seen.get("x-edge").map(String::as_str), Some("1"));
    assert_eq!(seen.get("x-client").map(String::as_str), Some("192.0.2.10"));
    assert_eq!(
        seen.get("x-trace").map(String::as_str),
        Some("from-client, trace-7"),
        "add appends"
    );
    assert_eq!(seen.get("x-agent").map(String::as_str), Some("agent=tests"));
    assert!(!seen.contains_key("x-internal-secret"));

    // Outside the database: the template's default.
    let response = get(None).await.unwrap();
    assert_eq!(response.headers()["x-edge-country"], "XX");
}
