//! Publishes N readings as one node, as fast as the broker takes them, then
//! waits until every QoS 1/2 one is confirmed. For benchmarks (bench/).
//!
//!   cargo run --release --example loadgen -- --port 8883 --pki var/pki --node room101 --count 100000 --qos 1

use clap::Parser;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, Transport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long)]
    port: u16,
    /// Folder with ca.crt and <node>.crt/.key.
    #[arg(long)]
    pki: PathBuf,
    #[arg(long, default_value = "room101")]
    node: String,
    #[arg(long, default_value = "building/floor1/room101")]
    prefix: String,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Readings per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Spread the readings over this many distinct sensor ids (t00000, t00001,
    /// …), round robin; 1 means `temp_001` only.
    #[arg(long, default_value_t = 1)]
    sensors: u64,
    /// Readings as a real sensor sends them: each sensor's own seq (+1 each
    /// time) and a value drifting by a few hundredths. Without it, seq counts
    /// all readings and values cycle (what the other benches expect).
    #[arg(long)]
    walk: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let tls = roomsense::mqtt::tls_client_config(&roomsense::mqtt::TlsFiles {
        ca_file: a.pki.join("ca.crt"),
        cert_file: a.pki.join(format!("{}.crt", a.node)),
        key_file: a.pki.join(format!("{}.key", a.node)),
    })?;
    let mut o = MqttOptions::new(format!("loadgen-{}", a.node), a.host.clone(), a.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
    let (client, mut connection) = Client::new(o, 10_000);
    let qos = match a.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let (count, rate, sensors, prefix) = (a.count, a.rate, a.sensors.max(1), a.prefix.clone());
    let walk = a.walk;
    let publisher = std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut values = vec![2150i64; usize::try_from(sensors).unwrap_or(1)];
        let start = Instant::now();
        for seq in 1..=count {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let id = if sensors == 1 {
                "temp_001".to_owned()
            } else {
                format!("t{:05}", seq % sensors)
            };
            let topic = format!("{prefix}/temperature/{id}");
            let (value, own_seq) = if walk {
                let v = &mut values[usize::try_from(seq % sensors).unwrap_or(0)];
                *v += rng.i64(-3..=3);
                (*v as f64 / 100.0, seq / sensors + 1)
            } else {
                (20.0 + (seq % 500) as f64 / 100.0, seq)
            };
            let payload = format!(
                r#"{{"sensor_id":"{id}","sensor_type":"temperature","value":{value:.2},"unit":"celsius","timestamp":"{now}","seq":{own_seq}}}"#,
            );
            if client.publish(topic.as_str(), qos, false, payload).is_err() {
                break;
            }
        }
        client
    });
    let start = Instant::now();
    let mut confirmed = 0u64;
    let want = if qos == QoS::AtMostOnce { 0 } else { count };
    for event in connection.iter() {
        match event? {
            Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)) => confirmed += 1,
            Event::Outgoing(rumqttc::Outgoing::Publish(_)) if want == 0 => confirmed += 1,
            _ => {}
        }
        if confirmed >= count {
            break;
        }
    }
    let client = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    let _ = client.disconnect();
    eprintln!(
        "published {count} at QoS {} in {:.2} s",
        a.qos,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
