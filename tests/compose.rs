//! compose.yaml, checked without Docker: every Kafka client in it (another
//! container, the broker's own health check, payctl on the host) must reach
//! a listener whose *advertised* address it can reach too. A Kafka client
//! bootstraps, then talks to the address the broker advertises for the
//! listener it connected to; `localhost` in another container is that
//! container, not the broker.

use std::collections::BTreeMap;

use payctl::config::KafkaConfig;
use serde_yaml_ng::Value;

const COMPOSE: &str = include_str!("../compose.yaml");

/// One listener of the broker: its name, the port it binds in the
/// container, and the address it advertises.
#[derive(Debug)]
struct Listener {
    name: String,
    port: u16,
    advertised: (String, u16),
}

/// Where a client runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place<'a> {
    Host,
    Container(&'a str),
}

struct Compose {
    services: BTreeMap<String, Value>,
    broker: String,
    listeners: Vec<Listener>,
}

impl Compose {
    fn parse(text: &str) -> Compose {
        let root: Value = serde_yaml_ng::from_str(text).expect("compose.yaml is YAML");
        let services: BTreeMap<String, Value> = root
            .get("services")
            .and_then(|s| serde_yaml_ng::from_value(s.clone()).ok())
            .expect("compose.yaml has a services map");
        let brokers: Vec<&String> = services
            .iter()
            .filter(|(_, s)| env(s).contains_key("KAFKA_ADVERTISED_LISTENERS"))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(brokers.len(), 1, "one Kafka broker in compose.yaml");
        let broker = brokers[0].clone();
        let listeners = listeners(&env(&services[&broker]));
        Compose {
            services,
            broker,
            listeners,
        }
    }

    /// Names a container on compose's network resolves to the broker.
    fn broker_names(&self) -> Vec<String> {
        let service = &self.services[&self.broker];
        let mut names = vec![self.broker.clone()];
        names.extend(text(service.get("hostname")));
        names.extend(text(service.get("container_name")));
        names
    }

    /// The listener `address` reaches from `place`, if any.
    fn reach(&self, place: Place, (host, port): &(String, u16)) -> Option<&Listener> {
        let local = matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1");
        match place {
            // The host reaches the broker through a published port.
            Place::Host if local => {
                let container_port = self.published().get(port).copied()?;
                self.listeners.iter().find(|l| l.port == container_port)
            }
            Place::Host => None,
            // Inside the broker's container, localhost is the broker.
            Place::Container(c) if c == self.broker && local => {
                self.listeners.iter().find(|l| l.port == *port)
            }
            Place::Container(_) if self.broker_names().contains(host) => {
                self.listeners.iter().find(|l| l.port == *port)
            }
            Place::Container(_) => None,
        }
    }

    /// Host port → container port of the broker's published ports.
    fn published(&self) -> BTreeMap<u16, u16> {
        let ports = self.services[&self.broker].get("ports");
        let list = ports
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter_map(|p| text(Some(p)))
            .filter_map(|p| {
                let (host, container) = p.rsplit_once(':')?;
                let host = host.rsplit(':').next()?;
                Some((host.parse().ok()?, container.parse().ok()?))
            })
            .collect()
    }

    /// Why a client at `place` bootstrapping from `address` cannot work.
    fn problem(&self, place: Place, address: &str) -> Option<String> {
        let Some(parsed) = host_port(address) else {
            return Some(format!("{address} is not host:port"));
        };
        let Some(listener) = self.reach(place, &parsed) else {
            return Some(format!("{address} reaches no listener of {}", self.broker));
        };
        let (host, port) = &listener.advertised;
        match self.reach(place, &listener.advertised) {
            Some(_) => None,
            None => Some(format!(
                "{address} reaches listener {}, which advertises {host}:{port}, \
                 an address {place:?} cannot reach",
                listener.name
            )),
        }
    }
}

/// A service's environment, as a map (compose allows a map or `K=V` items).
fn env(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((text(Some(k))?, text(Some(v))?)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| {
                let item = text(Some(item))?;
                let (k, v) = item.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A scalar as text (numbers too: `KAFKA_NODE_ID: 1`).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// `NAME://host:port,…` as (name, host, port).
fn endpoints(list: &str) -> Vec<(String, String, u16)> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let (name, address) = item.trim().split_once("://").expect("NAME://host:port");
            let (host, port) = host_port(address).expect("a listener has a port");
            (name.to_string(), host, port)
        })
        .collect()
}

/// The broker's client listeners: bound and advertised, by name.
fn listeners(env: &BTreeMap<String, String>) -> Vec<Listener> {
    let bound = endpoints(&env["KAFKA_LISTENERS"]);
    let protocols: Vec<String> = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        .split(',')
        .filter_map(|pair| Some(pair.split_once(':')?.0.to_string()))
        .collect();
    endpoints(&env["KAFKA_ADVERTISED_LISTENERS"])
        .into_iter()
        .map(|(name, host, port)| {
            assert!(
                protocols.contains(&name),
                "advertised listener {name} has no security protocol"
            );
            let (_, _, bound_port) = bound
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("advertised listener {name} is not in KAFKA_LISTENERS"));
            Listener {
                name,
                port: *bound_port,
                advertised: (host, port),
            }
        })
        .collect()
}

/// Every bootstrap address a service uses, in its command, entrypoint,
/// health check or environment.
fn bootstrap_addresses(service: &Value) -> Vec<String> {
    let mut words = Vec::new();
    for field in ["command", "entrypoint"] {
        collect_words(service.get(field), &mut words);
    }
    collect_words(
        service.get("healthcheck").and_then(|h| h.get("test")),
        &mut words,
    );
    let mut found: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bootstrap-server" || w[0] == "--bootstrap-servers")
        .flat_map(|w| w[1].split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    for (key, value) in env(service) {
        if key.ends_with("BOOTSTRAP_SERVERS") {
            found.extend(value.split(',').map(str::to_string));
        }
    }
    found
}

fn collect_words(value: Option<&Value>, words: &mut Vec<String>) {
    match value {
        Some(Value::String(s)) => words.extend(s.split_whitespace().map(str::to_string)),
        Some(Value::Sequence(items)) => {
            for item in items {
                collect_words(Some(item), words);
            }
        }
        _ => {}
    }
}

#[test]
fn every_kafka_client_in_compose_reaches_an_address_the_broker_advertises_on_its_network() {
    let compose = Compose::parse(COMPOSE);
    let mut clients = Vec::new();
    for (name, service) in &compose.services {
        for address in bootstrap_addresses(service) {
            clients.push((Place::Container(name.as_str()), address));
        }
    }
    assert!(
        clients
            .iter()
            .any(|(place, _)| *place != Place::Container(&compose.broker)),
        "another container bootstraps from the broker (the topics service): {clients:?}"
    );
    // payctl on the host, with no flags.
    clients.push((Place::Host, KafkaConfig::DEFAULT_BROKERS.to_string()));
    let problems: Vec<String> = clients
        .iter()
        .filter_map(|(place, address)| {
            let problem = compose.problem(*place, address)?;
            Some(format!("{place:?}: {problem}"))
        })
        .collect();
    assert!(problems.is_empty(), "compose.yaml: {problems:#?}");
}

/// The check above, on the listener set-up compose.yaml had before: one
/// listener advertised as localhost, which the topics container reached as
/// kafka:9092 and then could not follow.
#[test]
fn a_broker_advertising_only_localhost_is_caught_for_other_containers() {
    let before = COMPOSE
        .replace(
            "KAFKA_LISTENERS: INTERNAL://:19092,EXTERNAL://:9092,CONTROLLER://:9093",
            "KAFKA_LISTENERS: PLAINTEXT://:9092,CONTROLLER://:9093",
        )
        .replace(
            "KAFKA_ADVERTISED_LISTENERS: INTERNAL://kafka:19092,EXTERNAL://localhost:9092",
            "KAFKA_ADVERTISED_LISTENERS: PLAINTEXT://localhost:9092",
        )
        .replace(
            "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        )
        .replace("kafka:19092 ", "kafka:9092 ");
    assert_ne!(before, COMPOSE, "the replacements matched compose.yaml");
    let compose = Compose::parse(&before);
    let topics = compose
        .problem(Place::Container("topics"), "kafka:9092")
        .expect("the topics container cannot follow localhost:9092");
    assert!(topics.contains("advertises localhost:9092"), "{topics}");
    // The host was fine then, and is now.
    assert_eq!(
        compose.problem(Place::Host, KafkaConfig::DEFAULT_BROKERS),
        None
    );
}
