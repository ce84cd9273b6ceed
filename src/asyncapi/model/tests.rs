use super::*;
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
