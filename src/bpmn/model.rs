//! BPMN 2.0 XML read into a small model: processes, their flow elements and
//! sequence flows, messages and errors, extension elements, and where each
//! shape sits in the diagram.
//!
//! Reading only: nothing here decides what an element becomes (that is
//! [`super::translate`]). Every element keeps its line, so whatever cannot
//! be translated is reported where it was written. Elements are found by
//! namespace URI, not prefix (Camunda Modeler writes `bpmn:`, others
//! `bpmn2:` or a default namespace).

use std::collections::HashMap;

use roxmltree::{Document, Node};

/// The BPMN 2.0 model namespace.
pub const BPMN: &str = "http://www.omg.org/spec/BPMN/20100524/MODEL";
/// The BPMN 2.0 diagram interchange namespace.
pub const BPMNDI: &str = "http://www.omg.org/spec/BPMN/20100524/DI";
/// The diagram bounds namespace.
pub const DC: &str = "http://www.omg.org/spec/DD/20100524/DC";
/// baton's extension elements (`baton:command`, `baton:await`, ...).
pub const BATON: &str = "urn:baton:bpmn:1";
/// Camunda 8 (Zeebe) extension elements, as Camunda Modeler writes them.
pub const ZEEBE: &str = "http://camunda.org/schema/zeebe/1.0";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Namespaces of attributes that only concern the modeler (colours,
/// execution platform), never behaviour.
const COSMETIC: [&str; 4] = [
    XSI,
    "http://camunda.org/schema/modeler/1.0",
    "http://www.omg.org/spec/BPMN/non-normative/color/1.0",
    "http://bpmn.io/schema/bpmn/biocolor/1.0",
];

/// The XML is not well-formed, or not BPMN 2.0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("line {line}, column {column}: not well-formed XML: {message}")]
    Xml {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "line {line}: the root element is `{found}`, not BPMN 2.0 `definitions` (namespace {BPMN})"
    )]
    NotBpmn { line: usize, found: String },
}

/// A whole BPMN file.
#[derive(Debug, Default)]
pub struct Model {
    pub processes: Vec<Process>,
    /// `message` id → its name (the CloudEvents type).
    pub messages: HashMap<String, Named>,
    /// `error` id → its error code (the CloudEvents type of the outcome).
    pub errors: HashMap<String, ErrorDef>,
    /// Element id → top-left corner of its shape in the diagram.
    pub shapes: HashMap<String, (f64, f64)>,
    /// Pools, message flows and other collaboration parts, each with the
    /// process a pool stands for: they describe who talks to whom, which
    /// baton reads from `baton:command` instead.
    pub collaboration: Vec<(Item, Option<String>)>,
}

/// A root element with a name: a `message`.
#[derive(Debug, Clone)]
pub struct Named {
    pub name: Option<String>,
    pub line: usize,
}

/// An `error` root element.
#[derive(Debug, Clone)]
pub struct ErrorDef {
    pub name: Option<String>,
    pub code: Option<String>,
    pub line: usize,
}

/// Anything with an id, a name and a line: what a report points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub name: Option<String>,
    pub line: usize,
    /// The element's local name, e.g. `inclusiveGateway`.
    pub tag: String,
}

/// An executable process (a pool's process in a collaboration).
#[derive(Debug)]
pub struct Process {
    pub item: Item,
    pub documentation: Option<String>,
    pub ext: Extensions,
    pub scope: Scope,
    /// Lanes: who does what; baton has no notion of them.
    pub lanes: Vec<Item>,
}

/// The flow elements and sequence flows of a process or sub-process.
#[derive(Debug, Default)]
pub struct Scope {
    pub elements: Vec<Element>,
    pub flows: Vec<Flow>,
    /// `association` source → target (compensation handlers, annotations).
    pub associations: Vec<(String, String)>,
    /// Text annotations: id, text, line.
    pub annotations: Vec<(String, String, usize)>,
    /// Data objects, data stores, groups and other artifacts.
    pub artifacts: Vec<Item>,
}

/// One flow node (event, task, gateway, sub-process).
#[derive(Debug)]
pub struct Element {
    pub item: Item,
    pub kind: Kind,
    pub documentation: Option<String>,
    /// Boundary events: the activity they are attached to.
    pub attached_to: Option<String>,
    /// Boundary events: `cancelActivity` (true unless written false);
    /// start events in event sub-processes: `isInterrupting`.
    pub interrupting: bool,
    /// Gateways and activities: the id of the default flow.
    pub default_flow: Option<String>,
    /// Activities: `isForCompensation`.
    pub for_compensation: bool,
    /// Activities: a multi-instance or standard loop marker.
    pub looping: Option<&'static str>,
    /// Send and receive tasks: the `messageRef`.
    pub message_ref: Option<String>,
    pub ext: Extensions,
    /// Attributes from other namespaces than BPMN's and the modeler's.
    pub foreign_attributes: Vec<String>,
}

/// What a flow node is.
#[derive(Debug)]
pub enum Kind {
    Start(Trigger),
    End(Trigger),
    /// An intermediate catch event.
    Catch(Trigger),
    /// An intermediate throw event.
    Throw(Trigger),
    Boundary(Trigger),
    Task(TaskKind),
    /// A call activity and the process it calls (`calledElement`).
    Call(Option<String>),
    Gateway(GatewayKind),
    /// A sub-process; `event` for an event sub-process.
    SubProcess {
        event: bool,
        scope: Box<Scope>,
    },
    /// Anything else that sits in a flow (a transaction, an ad-hoc
    /// sub-process, a choreography task ...).
    Other,
}

/// The event definition of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    None,
    /// The `messageRef` (a `message` id), if given.
    Message(Option<String>),
    Timer(Timer),
    /// The `errorRef` (an `error` id), if given.
    Error(Option<String>),
    Escalation,
    Compensate,
    Signal,
    Conditional,
    Link,
    Terminate,
    Cancel,
    /// More than one event definition.
    Multiple,
}

/// A timer event definition.
#[derive(Debug, Clone, PartialEq)]
pub enum Timer {
    Duration(String),
    Date(String),
    Cycle(String),
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Service,
    Send,
    Receive,
    User,
    Manual,
    Script,
    BusinessRule,
    /// A task without a type.
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    Exclusive,
    Parallel,
    Inclusive,
    EventBased,
    Complex,
}

/// A sequence flow.
#[derive(Debug)]
pub struct Flow {
    pub item: Item,
    pub source: String,
    pub target: String,
    pub condition: Option<Condition>,
}

/// A `conditionExpression`.
#[derive(Debug, Clone)]
pub struct Condition {
    pub text: String,
    /// The `language` attribute, if written.
    pub language: Option<String>,
}

/// The extension elements of an element.
#[derive(Debug, Default)]
pub struct Extensions {
    /// baton's own elements, in document order.
    pub baton: Vec<Ext>,
    /// `zeebe:taskDefinition type`: the job type, taken as the command type.
    pub zeebe_type: Option<String>,
    /// `zeebe:calledElement processId`.
    pub zeebe_called: Option<String>,
    /// `zeebe:script expression` and `resultVariable`.
    pub zeebe_script: Option<(String, String)>,
    /// Other extension elements (qualified name, line): no counterpart.
    pub foreign: Vec<(String, usize)>,
}

/// A baton extension element, generic: [`super::translate`] gives it meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Ext {
    /// Local name, e.g. `command`.
    pub tag: String,
    pub line: usize,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Ext>,
}

impl Ext {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Model {
    /// Reads a BPMN 2.0 document.
    pub fn read(xml: &str) -> Result<Model, ReadError> {
        let doc = Document::parse(xml).map_err(|e| {
            let pos = e.pos();
            ReadError::Xml {
                line: pos.row as usize,
                column: pos.col as usize,
                message: e.to_string(),
            }
        })?;
        let reader = Reader { doc: &doc };
        let root = doc.root_element();
        if !reader.is(root, BPMN, "definitions") {
            return Err(ReadError::NotBpmn {
                line: reader.line(root),
                found: root.tag_name().name().to_string(),
            });
        }
        let mut model = Model::default();
        for child in root.children().filter(Node::is_element) {
            let ns = child.tag_name().namespace();
            let name = child.tag_name().name();
            match (ns, name) {
                (Some(BPMN), "process") => model.processes.push(reader.process(child)),
                (Some(BPMN), "message") => {
                    if let Some(id) = child.attribute("id") {
                        model.messages.insert(
                            id.to_string(),
                            Named {
                                name: child.attribute("name").map(str::to_string),
                                line: reader.line(child),
                            },
                        );
                    }
                }
                (Some(BPMN), "error") => {
                    if let Some(id) = child.attribute("id") {
                        model.errors.insert(
                            id.to_string(),
                            ErrorDef {
                                name: child.attribute("name").map(str::to_string),
                                code: child.attribute("errorCode").map(str::to_string),
                                line: reader.line(child),
                            },
                        );
                    }
                }
                (Some(BPMN), "collaboration") => {
                    for part in child.children().filter(Node::is_element) {
                        model.collaboration.push((
                            reader.item(part),
                            part.attribute("processRef").map(str::to_string),
                        ));
                    }
                }
                (Some(BPMNDI), "BPMNDiagram") => reader.shapes(child, &mut model.shapes),
                // Signals, escalations, item definitions, data stores:
                // referenced by elements, which are reported themselves.
                _ => {}
            }
        }
        Ok(model)
    }
}

struct Reader<'a, 'i> {
    doc: &'a Document<'i>,
}

impl<'a, 'i> Reader<'a, 'i> {
    fn is(&self, n: Node<'_, '_>, ns: &str, name: &str) -> bool {
        n.is_element() && n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
    }

    fn line(&self, n: Node<'_, '_>) -> usize {
        self.doc.text_pos_at(n.range().start).row as usize
    }

    fn item(&self, n: Node<'_, '_>) -> Item {
        Item {
            id: n.attribute("id").unwrap_or_default().to_string(),
            name: n
                .attribute("name")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            line: self.line(n),
            tag: n.tag_name().name().to_string(),
        }
    }

    fn child<'n>(&self, n: Node<'n, 'i>, name: &str) -> Option<Node<'n, 'i>> {
        n.children().find(|c| self.is(*c, BPMN, name))
    }

    fn text(&self, n: Node<'_, '_>, name: &str) -> Option<String> {
        self.child(n, name)
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    fn process(&self, n: Node<'_, '_>) -> Process {
        let mut lanes = Vec::new();
        for set in n.children().filter(|c| self.is(*c, BPMN, "laneSet")) {
            for lane in set.descendants().filter(|c| self.is(*c, BPMN, "lane")) {
                lanes.push(self.item(lane));
            }
        }
        Process {
            item: self.item(n),
            documentation: self.text(n, "documentation"),
            ext: self.extensions(n),
            scope: self.scope(n),
            lanes,
        }
    }

    fn scope(&self, n: Node<'_, '_>) -> Scope {
        let mut scope = Scope::default();
        for c in n.children().filter(Node::is_element) {
            if c.tag_name().namespace() != Some(BPMN) {
                continue;
            }
            let tag = c.tag_name().name();
            match tag {
                "documentation"
                | "extensionElements"
                | "laneSet"
                | "ioSpecification"
                | "property"
                | "dataInputAssociation"
                | "dataOutputAssociation" => {}
                "sequenceFlow" => scope.flows.push(Flow {
                    item: self.item(c),
                    source: c.attribute("sourceRef").unwrap_or_default().to_string(),
                    target: c.attribute("targetRef").unwrap_or_default().to_string(),
                    condition: self.child(c, "conditionExpression").map(|e| Condition {
                        text: e.text().unwrap_or_default().trim().to_string(),
                        language: e.attribute("language").map(str::to_string),
                    }),
                }),
                "association" => scope.associations.push((
                    c.attribute("sourceRef").unwrap_or_default().to_string(),
                    c.attribute("targetRef").unwrap_or_default().to_string(),
                )),
                "textAnnotation" => scope.annotations.push((
                    c.attribute("id").unwrap_or_default().to_string(),
                    self.text(c, "text").unwrap_or_default(),
                    self.line(c),
                )),
                "dataObject"
                | "dataObjectReference"
                | "dataStoreReference"
                | "group"
                | "category" => scope.artifacts.push(self.item(c)),
                _ => scope.elements.push(self.element(c)),
            }
        }
        scope
    }

    fn element(&self, n: Node<'_, '_>) -> Element {
        let tag = n.tag_name().name();
        let trigger = || self.trigger(n);
        let kind = match tag {
            "startEvent" => Kind::Start(trigger()),
            "endEvent" => Kind::End(trigger()),
            "intermediateCatchEvent" => Kind::Catch(trigger()),
            "intermediateThrowEvent" => Kind::Throw(trigger()),
            "boundaryEvent" => Kind::Boundary(trigger()),
            "serviceTask" => Kind::Task(TaskKind::Service),
            "sendTask" => Kind::Task(TaskKind::Send),
            "receiveTask" => Kind::Task(TaskKind::Receive),
            "userTask" => Kind::Task(TaskKind::User),
            "manualTask" => Kind::Task(TaskKind::Manual),
            "scriptTask" => Kind::Task(TaskKind::Script),
            "businessRuleTask" => Kind::Task(TaskKind::BusinessRule),
            "task" => Kind::Task(TaskKind::Plain),
            "callActivity" => Kind::Call(n.attribute("calledElement").map(str::to_string)),
            "exclusiveGateway" => Kind::Gateway(GatewayKind::Exclusive),
            "parallelGateway" => Kind::Gateway(GatewayKind::Parallel),
            "inclusiveGateway" => Kind::Gateway(GatewayKind::Inclusive),
            "eventBasedGateway" => Kind::Gateway(GatewayKind::EventBased),
            "complexGateway" => Kind::Gateway(GatewayKind::Complex),
            "subProcess" => Kind::SubProcess {
                event: n.attribute("triggeredByEvent") == Some("true"),
                scope: Box::new(self.scope(n)),
            },
            _ => Kind::Other,
        };
        let interrupting = match tag {
            "boundaryEvent" => n.attribute("cancelActivity") != Some("false"),
            _ => n.attribute("isInterrupting") != Some("false"),
        };
        let looping = n
            .children()
            .filter(|c| c.is_element() && c.tag_name().namespace() == Some(BPMN))
            .find_map(|c| match c.tag_name().name() {
                "multiInstanceLoopCharacteristics" => Some("multi-instance marker"),
                "standardLoopCharacteristics" => Some("loop marker"),
                _ => None,
            });
        let foreign_attributes = n
            .attributes()
            .filter_map(|a| {
                let ns = a.namespace()?;
                (ns != BPMN && !COSMETIC.contains(&ns)).then(|| {
                    let prefix = n.lookup_prefix(ns).unwrap_or("?");
                    format!("{prefix}:{}", a.name())
                })
            })
            .collect();
        Element {
            item: self.item(n),
            kind,
            documentation: self.text(n, "documentation"),
            attached_to: n.attribute("attachedToRef").map(str::to_string),
            interrupting,
            default_flow: n.attribute("default").map(str::to_string),
            for_compensation: n.attribute("isForCompensation") == Some("true"),
            looping,
            message_ref: n.attribute("messageRef").map(str::to_string),
            ext: self.extensions(n),
            foreign_attributes,
        }
    }

    fn trigger(&self, n: Node<'_, '_>) -> Trigger {
        let defs: Vec<Node<'_, '_>> = n
            .children()
            .filter(|c| {
                c.is_element()
                    && c.tag_name().namespace() == Some(BPMN)
                    && c.tag_name().name().ends_with("EventDefinition")
            })
            .collect();
        let [def] = defs.as_slice() else {
            return if defs.is_empty() {
                Trigger::None
            } else {
                Trigger::Multiple
            };
        };
        match def.tag_name().name() {
            "messageEventDefinition" => {
                Trigger::Message(def.attribute("messageRef").map(str::to_string))
            }
            "timerEventDefinition" => {
                let text = |name| self.text(*def, name);
                Trigger::Timer(if let Some(t) = text("timeDuration") {
                    Timer::Duration(t)
                } else if let Some(t) = text("timeDate") {
                    Timer::Date(t)
                } else if let Some(t) = text("timeCycle") {
                    Timer::Cycle(t)
                } else {
                    Timer::Missing
                })
            }
            "errorEventDefinition" => Trigger::Error(def.attribute("errorRef").map(str::to_string)),
            "escalationEventDefinition" => Trigger::Escalation,
            "compensateEventDefinition" => Trigger::Compensate,
            "signalEventDefinition" => Trigger::Signal,
            "conditionalEventDefinition" => Trigger::Conditional,
            "linkEventDefinition" => Trigger::Link,
            "terminateEventDefinition" => Trigger::Terminate,
            "cancelEventDefinition" => Trigger::Cancel,
            _ => Trigger::Multiple,
        }
    }

    fn extensions(&self, n: Node<'_, '_>) -> Extensions {
        let mut ext = Extensions::default();
        let Some(holder) = self.child(n, "extensionElements") else {
            return ext;
        };
        for c in holder.children().filter(Node::is_element) {
            let ns = c.tag_name().namespace().unwrap_or_default();
            let name = c.tag_name().name();
            match (ns, name) {
                (BATON, _) => ext.baton.push(self.ext(c)),
                (ZEEBE, "taskDefinition") if c.attribute("type").is_some() => {
                    ext.zeebe_type = c.attribute("type").map(str::to_string);
                }
                (ZEEBE, "calledElement") if c.attribute("processId").is_some() => {
                    ext.zeebe_called = c.attribute("processId").map(str::to_string);
                }
                (ZEEBE, "script") => {
                    if let (Some(e), Some(r)) =
                        (c.attribute("expression"), c.attribute("resultVariable"))
                    {
                        ext.zeebe_script = Some((e.to_string(), r.to_string()));
                    } else {
                        ext.foreign.push(("zeebe:script".into(), self.line(c)));
                    }
                }
                _ => {
                    let prefix = c.lookup_prefix(ns).unwrap_or("?");
                    ext.foreign.push((format!("{prefix}:{name}"), self.line(c)));
                }
            }
        }
        ext
    }

    fn ext(&self, n: Node<'_, '_>) -> Ext {
        Ext {
            tag: n.tag_name().name().to_string(),
            line: self.line(n),
            attrs: n
                .attributes()
                .map(|a| (a.name().to_string(), a.value().to_string()))
                .collect(),
            children: n
                .children()
                .filter(Node::is_element)
                .map(|c| {
                    let mut e = self.ext(c);
                    if c.tag_name().namespace() != Some(BATON) {
                        // Only baton's elements belong in baton's; keep the
                        // stranger visible so it is reported, not dropped.
                        e.tag = format!("{{{}}}{}", c.tag_name().namespace().unwrap_or(""), e.tag);
                    }
                    e
                })
                .collect(),
        }
    }

    fn shapes(&self, diagram: Node<'_, '_>, out: &mut HashMap<String, (f64, f64)>) {
        for shape in diagram
            .descendants()
            .filter(|c| self.is(*c, BPMNDI, "BPMNShape"))
        {
            let (Some(id), Some(bounds)) = (
                shape.attribute("bpmnElement"),
                shape.children().find(|c| self.is(*c, DC, "Bounds")),
            ) else {
                continue;
            };
            let num = |a: &str| bounds.attribute(a).and_then(|v| v.parse::<f64>().ok());
            if let (Some(x), Some(y)) = (num("x"), num("y")) {
                out.insert(id.to_string(), (x, y));
            }
        }
    }
}
