use super::*;
use crate::asyncapi::SpecError;
use crate::asyncapi::load;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/asyncapi/", $name))
    };
}

fn channel<'d>(d: &'d Document, id: &str) -> &'d Channel {
    d.channels.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no channel {id}"))
}

#[test]
fn demo_document_models_its_one_topic() {
    let d = load(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi/demo.yaml"))).unwrap();
    assert_eq!(
        (d.title.as_str(), d.info_version.as_str(), d.asyncapi.as_str()),
        ("Event Gateway Demo", "1.0.0", "3.0.0")
    );
    assert_eq!(d.topics(), vec!["event-gateway-demo"]);
    let c = channel(&d, "lightMeasured");
    assert_eq!(c.policy, Some(Policy::Annotate));
    assert_eq!(c.messages.len(), 1);
    let m = &c.messages[0];
    assert_eq!(m.name, "lightMeasured");
    assert_eq!(m.pointer, "/components/messages/lightMeasured");
    assert_eq!(m.payload.as_ref().unwrap().pointer, "/components/schemas/lightMeasuredPayload");
    assert_eq!(m.ce_type.as_deref(), Some("com.example.streetlights.light.measured"));
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn v2_parameters_traits_and_key_bindings() {
    let d = load(fixture!("streetlights-2.6.yaml")).unwrap();
    assert_eq!(d.channels.len(), 2);
    let measured = channel(&d, "smartylighting.streetlights.1.0.event.{streetlightId}.lighting.measured");
    assert!(measured.topic.matches("smartylighting.streetlights.1.0.event.abc.lighting.measured"));
    assert!(!measured.topic.matches("smartylighting.streetlights.1.0.event.a.b.lighting.measured"));
    let m = &measured.messages[0];
    assert_eq!(m.name, "lightMeasured");
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    // Headers come from the trait, the key schema from the kafka binding.
    assert_eq!(m.headers.as_ref().unwrap().pointer, "/components/messageTraits/commonHeaders/headers");
    assert_eq!(m.key.as_ref().unwrap().pointer, "/components/messages/lightMeasured/bindings/kafka/key");
    let turn = channel(&d, "smartylighting.streetlights.1.0.action.{streetlightId}.turn.on");
    assert_eq!(turn.policy, Some(Policy::Reject));
    assert_eq!(turn.messages[0].name, "turnOnOff");
}

#[test]
fn v2_json_one_of_and_binding_topic() {
    let d = load(fixture!("oneof-2.0.json")).unwrap();
    assert_eq!(d.topics(), vec!["shop.orders.v1"]);
    let names: Vec<_> = d.channels[0].messages.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["OrderPlaced", "OrderCancelled"]);
}

#[test]
fn v3_recursive_schemas_escaped_pointers_and_parameter_enums() {
    let d = load(fixture!("recursive-3.0.yaml")).unwrap();
    let trees = channel(&d, "trees/v1");
    assert_eq!(trees.messages[0].pointer, "/components/messages/a~1tree");
    assert_eq!(trees.messages[0].payload.as_ref().unwrap().pointer, "/components/schemas/node");
    let users = channel(&d, "users");
    assert!(users.topic.matches("user.42.eu.signedup"));
    assert!(!users.topic.matches("user.42.asia.signedup"));
    assert_eq!(users.messages[0].name, "signedUp");
}

#[test]
fn unsupported_formats_are_kept_and_marked() {
    let d = load(fixture!("avro-2.4.yaml")).unwrap();
    let formats: Vec<_> = d.channels[0].messages.iter().map(|m| m.payload.as_ref().unwrap().format.clone()).collect();
    assert_eq!(formats[0], SchemaFormat::Other("application/vnd.apache.avro;version=1.9.0".into()));
    assert_eq!(formats[1], SchemaFormat::JsonSchema);

    let d = load(fixture!("multiformat-3.0.yaml")).unwrap();
    assert_eq!(d.topics(), vec!["sensors.readings"]);
    let c = channel(&d, "sensors");
    let reading = &c.messages[0];
    assert_eq!(reading.payload.as_ref().unwrap().pointer, "/channels/sensors/messages/reading/payload/schema");
    assert_eq!(reading.payload.as_ref().unwrap().format, SchemaFormat::JsonSchema);
    assert!(matches!(c.messages[1].payload.as_ref().unwrap().format, SchemaFormat::Other(_)));
    assert!(d.warnings.iter().any(|w| w.contains("dynamic")), "{:?}", d.warnings);
}

#[test]
fn broken_documents_say_what_is_wrong() {
    let e = load(fixture!("broken-ref.yaml")).unwrap_err().to_string();
    assert!(e.contains("#/components/messages/doesNotExist") && e.contains("/channels/a/messages/m"), "{e}");
    let e = load(fixture!("broken-syntax.yaml")).unwrap_err().to_string();
    assert!(e.contains("line 5 column 9"), "{e}");
    let e = load(fixture!("external-ref.yaml")).unwrap_err().to_string();
    assert!(e.contains("https://example.com/messages.yaml#/Thing") && e.contains("within the document"), "{e}");
    let e = load(fixture!("bad-version.yaml")).unwrap_err().to_string();
    assert!(e.contains("1.2.0"), "{e}");
    assert!(load("just a string").is_err());
    assert!(load("asyncapi: 3.0.0\n").unwrap_err().to_string().contains("info"));
}

#[test]
fn circular_references_are_refused() {
    let e = load(
        "asyncapi: 3.0.0\ninfo: {title: c, version: '1'}\nchannels:\n  a: {$ref: '#/channels/b'}\n  b: {$ref: '#/channels/a'}\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("circular"), "{e}");
}

/// A minimal document with `asyncapi` written as `version` (YAML text, quoted or not).
fn with_version(version: &str) -> String {
    format!("asyncapi: {version}\ninfo: {{title: v, version: '1'}}\nchannels: {{}}\n")
}

#[test]
fn every_supported_version_loads_and_the_next_minor_is_refused_with_the_list() {
    for v in ["2.0.0", "2.1.0", "2.2.0", "2.3.0", "2.4.0", "2.5.0", "2.6.0", "3.0.0", "3.1.0", "2.6.1", "'3.1.0'"] {
        let d = load(&with_version(v)).unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(d.asyncapi, v.trim_matches('\''));
    }
    for v in ["2.7.0", "3.2.0", "4.0.0", "1.2.0", "0.1.0"] {
        let e = load(&with_version(v)).unwrap_err();
        assert_eq!(e, SpecError::Version(v.into()));
        assert_eq!(e.to_string(), format!("AsyncAPI {v} is not supported: eventgate reads 2.0.0–2.6.0, 3.0.0, 3.1.0"));
    }
}

#[test]
fn v3_1_documents_are_modelled_like_3_0() {
    let text = fixture!("recursive-3.0.yaml").replace("asyncapi: 3.0.0", "asyncapi: 3.1.0");
    let d = load(&text).unwrap();
    assert_eq!(d.asyncapi, "3.1.0");
    let users = channel(&d, "users");
    assert!(users.topic.matches("user.42.eu.signedup") && !users.topic.matches("user.42.asia.signedup"));
    assert_eq!(channel(&d, "trees/v1").messages[0].payload.as_ref().unwrap().pointer, "/components/schemas/node");
    // The ROS 2 bindings 3.1 added (servers, operations) are accepted, and a kafka binding still
    // names the topic.
    let text = "asyncapi: 3.1.0\ninfo: {title: r, version: '1'}\nservers:\n  s:\n    host: h:9092\n    \
                protocol: kafka\n    bindings: {ros2: {rmwImplementation: rmw_zenoh_cpp, domainId: 0}}\n\
                channels:\n  c:\n    address: c\n    bindings:\n      kafka: {topic: c.v1}\n    messages:\n      \
                m:\n        payload: {type: string}\noperations:\n  o:\n    action: send\n    \
                channel: {$ref: '#/channels/c'}\n    bindings: {ros2: {role: publisher, node: /n}}\n";
    let d = load(text).unwrap();
    assert_eq!(d.topics(), vec!["c.v1"]);
    assert_eq!(channel(&d, "c").messages[0].name, "m");
}

#[test]
fn malformed_versions_are_refused_with_what_a_version_looks_like() {
    for (v, why) in [
        ("'3.0'", "MAJOR.MINOR.PATCH"),
        ("'3'", "MAJOR.MINOR.PATCH"),
        ("3.0.0.1", "MAJOR.MINOR.PATCH"),
        ("'03.0.0'", "MAJOR.MINOR.PATCH"),
        ("'3.00.0'", "MAJOR.MINOR.PATCH"),
        ("'v3.0.0'", "MAJOR.MINOR.PATCH"),
        ("' 3.0.0'", "MAJOR.MINOR.PATCH"),
        ("'3.0.x'", "MAJOR.MINOR.PATCH"),
        ("''", "MAJOR.MINOR.PATCH"),
        ("3.0.0-next-major-spec.1", "pre-release"),
        ("2.0.0-rc2", "pre-release"),
        ("3.0.0+build.7", "pre-release"),
    ] {
        let e = load(&with_version(v)).unwrap_err();
        assert!(matches!(e, SpecError::VersionFormat { .. }), "{v}: {e:?}");
        assert!(e.to_string().contains(why) && e.to_string().contains(v.trim_matches('\'')), "{v}: {e}");
    }
    // Unquoted, YAML reads these as numbers.
    for (v, shown) in [("2.0", "2.0"), ("3", "3"), ("3.1", "3.1")] {
        let e = load(&with_version(v)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "`asyncapi: {shown}` is not a version eventgate reads: it is a number (YAML reads an unquoted {shown} as \
                 one); the version is a string MAJOR.MINOR.PATCH, such as 3.0.0"
            )
        );
    }
    let e = load(&with_version("[3, 0, 0]")).unwrap_err();
    assert!(matches!(e, SpecError::NotAsyncApi(_)), "{e:?}");
}

#[test]
fn all_external_refs_are_listed_in_one_error() {
    let text = "asyncapi: 3.0.0\ninfo: {title: x, version: '1'}\nchannels:\n  \
                a: {$ref: 'channels.yaml#/a'}\n  \
                b:\n    address: b\n    parameters: {p: {$ref: 'params.yaml#/p'}}\n    \
                bindings: {$ref: 'bindings.yaml'}\n    messages:\n      \
                m1: {$ref: 'https://example.com/m.yaml#/M1'}\n      \
                m2:\n        traits: [{$ref: 'traits.yaml#/T'}]\n        \
                payload: {$ref: '#/components/schemas/s'}\n        \
                headers: {type: object, properties: {h: {$ref: 'h.json'}}}\n      \
                m3: {$ref: '#/components/messages/m3'}\n\
                components:\n  messages:\n    m3: {payload: {$ref: '#/components/schemas/s'}}\n  \
                schemas:\n    s:\n      type: object\n      \
                properties:\n        enum: {$ref: 'enum.json'}\n        x: {$ref: '#/components/schemas/t'}\n      \
                enum: [{$ref: 'data, not a reference'}]\n      examples: [{$ref: 'data too'}]\n    \
                t: {items: {$ref: 'deep.json#/t'}}\n    unused: {$ref: 'never-compiled.json'}\n";
    let e = load(text).unwrap_err();
    let SpecError::ExternalRefs { refs, total } = &e else { panic!("{e:?}") };
    let mut listed: Vec<(&str, &str)> = refs.iter().map(|(a, r)| (a.as_str(), r.as_str())).collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("/channels/a", "channels.yaml#/a"),
            ("/channels/b/bindings", "bindings.yaml"),
            ("/channels/b/messages/m1", "https://example.com/m.yaml#/M1"),
            ("/channels/b/messages/m2/headers/properties/h", "h.json"),
            ("/channels/b/messages/m2/traits/0", "traits.yaml#/T"),
            ("/channels/b/parameters/p", "params.yaml#/p"),
            ("/components/schemas/s/properties/enum", "enum.json"),
            ("/components/schemas/t/items", "deep.json#/t"),
        ]
    );
    assert_eq!(*total, 8);
    let text = e.to_string();
    assert!(text.starts_with("8 $refs to other files") && text.contains("within the document"), "{text}");
    assert!(text.contains("/channels/b/messages/m1 → https://example.com/m.yaml#/M1"), "{text}");
}

#[test]
fn many_external_refs_are_listed_up_to_a_bound() {
    let mut text = String::from("asyncapi: 2.6.0\ninfo: {title: x, version: '1'}\nchannels:\n");
    for i in 0..25 {
        text.push_str(&format!("  c{i:02}:\n    publish:\n      message: {{$ref: 'messages.yaml#/m{i:02}'}}\n"));
    }
    let e = load(&text).unwrap_err();
    let SpecError::ExternalRefs { refs, total } = &e else { panic!("{e:?}") };
    assert_eq!((refs.len(), *total), (MAX_LISTED_REFS, 25));
    let text = e.to_string();
    assert!(text.starts_with("25 $refs to other files") && text.ends_with("; and 5 more"), "{text}");
    assert_eq!(text.matches(" → messages.yaml#/m").count(), 20, "{text}");
    // One is named as one.
    let e = load(fixture!("external-ref.yaml")).unwrap_err().to_string();
    assert!(e.starts_with("a $ref to other files") && !e.contains("more"), "{e}");
}

#[test]
fn yaml_1_1_booleans_in_a_document_are_strings() {
    let d = load(
        "asyncapi: 3.0.0\ninfo: {title: b, version: '1'}\nchannels:\n  c:\n    address: c\n    messages:\n      m:\n        \
         payload:\n          type: object\n          required: [n, command]\n          properties:\n            \
         n: {type: string}\n            command: {enum: [on, off, yes, no]}\n",
    )
    .unwrap();
    let payload = d.root.pointer("/channels/c/messages/m/payload").unwrap();
    assert_eq!(payload["required"], serde_json::json!(["n", "command"]));
    assert_eq!(payload["properties"]["command"]["enum"], serde_json::json!(["on", "off", "yes", "no"]));
}
