//! OTLP receivers for tests: a real OTLP/HTTP (protobuf) or OTLP/gRPC endpoint
//! that keeps every span it is sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// A span as received, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    pub name: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub error: bool,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

type Store = Arc<Mutex<Vec<Received>>>;

fn keep(store: &Store, req: ExportTraceServiceRequest) {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Received {
                    service: service.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent: hex(&s.parent_span_id),
                    name: s.name.clone(),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    error: s.status.as_ref().is_some_and(|st| st.code == 2),
                });
            }
        }
    }
    if let Ok(mut s) = store.lock() {
        s.extend(out);
    }
}

/// A running receiver; it stops with the test process.
pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
}

impl Receiver {
    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.store.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// OTLP/HTTP with protobuf bodies on `POST /v1/traces`.
    pub fn http() -> Receiver {
        let store: Store = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("receiver port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("receiver address");
        let kept = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| {
                        let kept = kept.clone();
                        async move {
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(req) => {
                                    keep(&kept, req);
                                    (
                                        axum::http::StatusCode::OK,
                                        [("content-type", "application/x-protobuf")],
                                        ExportTraceServiceResponse::default().encode_to_vec(),
                                    )
                                }
                                Err(_) => (
                                    axum::http::StatusCode::BAD_REQUEST,
                                    [("content-type", "text/plain")],
                                    b"not an ExportTraceServiceRequest".to_vec(),
                                ),
                            }
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        Receiver { addr, store }
    }

    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    pub fn grpc() -> Receiver {
        let store: Store = Arc::default();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("receiver port");
        let service = Grpc(store.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("receiver runtime");
            rt.block_on(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(TraceServiceServer::new(service))
                    .serve(addr)
                    .await;
            });
        });
        // Up before the caller sends anything.
        super::eventually(10, "the gRPC receiver to listen", || {
            std::net::TcpStream::connect(addr).ok()
        });
        Receiver { addr, store }
    }
}

struct Grpc(Store);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}
