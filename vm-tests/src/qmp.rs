//! A small QMP (QEMU Machine Protocol) client: enough to list the free vCPU
//! slots of a guest and hot-add vCPUs into them.
//!
//! QMP is JSON lines over a Unix socket: the server greets, the client
//! negotiates with `qmp_capabilities`, then every command gets a `return` or an
//! `error`; asynchronous `event` messages may arrive in between and are kept.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

/// One JSON command line, newline-terminated, as QMP expects it.
pub fn command_line(execute: &str, arguments: Option<Value>) -> String {
    let mut message = Map::new();
    message.insert("execute".to_owned(), Value::String(execute.to_owned()));
    if let Some(arguments) = arguments {
        message.insert("arguments".to_owned(), arguments);
    }
    let mut line = Value::Object(message).to_string();
    line.push('\n');
    line
}

/// A vCPU slot from `query-hotpluggable-cpus`.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSlot {
    /// The device type to `device_add` (e.g. `qemu64-x86_64-cpu`).
    pub driver: String,
    /// The slot's topology ids (`socket-id`, `core-id`, `thread-id`, …), passed
    /// to `device_add` unchanged.
    pub props: Map<String, Value>,
    /// True when a vCPU occupies the slot (QEMU then reports its `qom-path`).
    pub plugged: bool,
}

impl CpuSlot {
    /// Topology ids as numbers in socket, die, cluster, core, thread order, to
    /// pick free slots in a stable order.
    fn order_key(&self) -> Vec<u64> {
        ["socket-id", "die-id", "cluster-id", "core-id", "thread-id"]
            .iter()
            .map(|key| self.props.get(*key).and_then(Value::as_u64).unwrap_or(0))
            .collect()
    }
}

/// Parses the `return` value of `query-hotpluggable-cpus`.
pub fn parse_hotpluggable_cpus(reply: &Value) -> Result<Vec<CpuSlot>> {
    let slots = reply
        .as_array()
        .ok_or_else(|| anyhow!("query-hotpluggable-cpus returned {reply}, not a list"))?;
    slots
        .iter()
        .map(|slot| {
            let driver = slot
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("hotpluggable CPU slot without a type: {slot}"))?;
            let props = slot
                .get("props")
                .and_then(Value::as_object)
                .ok_or_else(|| anyhow!("hotpluggable CPU slot without props: {slot}"))?;
            Ok(CpuSlot {
                driver: driver.to_owned(),
                props: props.clone(),
                plugged: slot.get("qom-path").is_some(),
            })
        })
        .collect()
}

/// The first `count` free slots in topology order.
pub fn free_slots(slots: &[CpuSlot], count: usize) -> Result<Vec<CpuSlot>> {
    let mut free: Vec<CpuSlot> = slots.iter().filter(|s| !s.plugged).cloned().collect();
    free.sort_by_key(CpuSlot::order_key);
    if free.len() < count {
        bail!(
            "the guest has {} free vCPU slots, {count} needed: raise maxcpus",
            free.len()
        );
    }
    free.truncate(count);
    Ok(free)
}

/// `device_add` arguments that plug a vCPU into `slot` under the device id `id`.
pub fn device_add_arguments(slot: &CpuSlot, id: &str) -> Value {
    let mut arguments = slot.props.clone();
    arguments.insert("driver".to_owned(), json!(slot.driver));
    arguments.insert("id".to_owned(), json!(id));
    Value::Object(arguments)
}

/// What the server answered to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Return(Value),
    Error { class: String, desc: String },
}

/// Classifies one message from the server: `None` for events and greetings.
pub fn parse_reply(message: &Value) -> Option<Reply> {
    if let Some(value) = message.get("return") {
        return Some(Reply::Return(value.clone()));
    }
    let error = message.get("error")?;
    let text = |key| {
        error
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    Some(Reply::Error {
        class: text("class"),
        desc: text("desc"),
    })
}

/// A negotiated QMP connection.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Asynchronous events received so far, for the test log.
    pub events: Vec<Value>,
}

impl Client {
    /// Connects to a QEMU started with `-qmp unix:PATH,server=on,wait=off`,
    /// retrying until `timeout` while QEMU creates the socket.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("connecting to the QMP socket {}", path.display())
                    })
                }
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .context("setting a read timeout on the QMP socket")?;
        let writer = stream.try_clone().context("cloning the QMP socket")?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = client.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP server greeted with {greeting}, not a QMP greeting");
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let read = self
            .reader
            .read_line(&mut line)
            .context("reading from the QMP socket")?;
        if read == 0 {
            bail!("QEMU closed the QMP socket");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}, not JSON"))
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, execute: &str, arguments: Option<Value>) -> Result<Value> {
        let line = command_line(execute, arguments);
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("sending {execute} over QMP"))?;
        loop {
            let message = self.read_message()?;
            match parse_reply(&message) {
                Some(Reply::Return(value)) => return Ok(value),
                Some(Reply::Error { class, desc }) => {
                    bail!("QMP {execute} failed: {class}: {desc}")
                }
                None => self.events.push(message),
            }
        }
    }

    /// Hot-adds `count` vCPUs into the first free slots; returns the slots used.
    pub fn hot_add_cpus(&mut self, count: usize) -> Result<Vec<CpuSlot>> {
        let reply = self.execute("query-hotpluggable-cpus", None)?;
        let slots = free_slots(&parse_hotpluggable_cpus(&reply)?, count)?;
        for (index, slot) in slots.iter().enumerate() {
            let id = format!("kvt-cpu{index}");
            self.execute("device_add", Some(device_add_arguments(slot, &id)))?;
        }
        Ok(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape QEMU 7.2 answers with for `-smp cpus=2,maxcpus=4` (highest
    /// slot first, plugged slots carry a qom-path).
    fn reply() -> Value {
        json!([
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 3}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 2}, "vcpus-count": 1, "type": "qemu64-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 1}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[1]", "type": "qemu64-x86_64-cpu"},
            {"props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]", "type": "qemu64-x86_64-cpu"}
        ])
    }

    #[test]
    fn command_lines_are_single_json_lines() {
        assert_eq!(
            command_line("qmp_capabilities", None),
            "{\"execute\":\"qmp_capabilities\"}\n"
        );
        let line = command_line("device_add", Some(json!({"driver": "x", "id": "y"})));
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["execute"], "device_add");
        assert_eq!(parsed["arguments"]["id"], "y");
    }

    #[test]
    fn free_slots_come_in_topology_order_and_skip_plugged_ones() {
        let slots = parse_hotpluggable_cpus(&reply()).unwrap();
        assert_eq!(slots.iter().filter(|s| s.plugged).count(), 2);
        let free = free_slots(&slots, 2).unwrap();
        let sockets: Vec<u64> = free
            .iter()
            .map(|s| s.props["socket-id"].as_u64().unwrap())
            .collect();
        assert_eq!(sockets, [2, 3]);
        let error = free_slots(&slots, 3).unwrap_err().to_string();
        assert!(error.contains("2 free vCPU slots, 3 needed"), "{error}");
    }

    #[test]
    fn device_add_carries_the_slot_ids_the_driver_and_an_id() {
        let slots = parse_hotpluggable_cpus(&reply()).unwrap();
        let arguments = device_add_arguments(&free_slots(&slots, 1).unwrap()[0], "kvt-cpu0");
        assert_eq!(
            arguments,
            json!({"driver": "qemu64-x86_64-cpu", "id": "kvt-cpu0", "socket-id": 2, "core-id": 0, "thread-id": 0})
        );
        let line: Value =
            serde_json::from_str(&command_line("device_add", Some(arguments.clone()))).unwrap();
        assert_eq!(
            line,
            json!({"execute": "device_add", "arguments": arguments})
        );
    }

    #[test]
    fn replies_errors_and_events_are_told_apart() {
        assert_eq!(
            parse_reply(&json!({"return": {}})),
            Some(Reply::Return(json!({})))
        );
        assert_eq!(
            parse_reply(&json!({"error": {"class": "GenericError", "desc": "no slot"}})),
            Some(Reply::Error {
                class: "GenericError".into(),
                desc: "no slot".into()
            })
        );
        assert_eq!(
            parse_reply(&json!({"event": "ACPI_DEVICE_OST", "data": {}})),
            None
        );
        assert!(parse_hotpluggable_cpus(&json!({"not": "a list"})).is_err());
    }
}
