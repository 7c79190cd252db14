//! Drops the graph nodes that do not feed the score output before a model is loaded.
//!
//! ONNX Runtime runs every node of a graph whatever outputs a run asks for, so a scikit-learn
//! classifier exported by skl2onnx computes its label branch (ArgMax, ArrayFeatureExtractor,
//! Reshape, Cast) on every request although the service reads only the probabilities; a
//! multi-head model computes every head. The score output's values do not change: only nodes
//! it does not depend on go.
//!
//! The model is edited at the protobuf wire level: every field is copied as bytes, so nothing
//! this code does not know about is lost. Graphs with subgraphs (If, Loop, Scan), whose nodes
//! may read outer values by name, are left as they are.

use std::collections::HashSet;

/// `model` with only what `output` depends on, and how many nodes went; `None` when there
/// is nothing to drop or the model is not one this code understands (it is then loaded as is,
/// and the check against the spec reports what is wrong with it).
pub(crate) fn prune_to_output(model: &[u8], output: &str) -> Option<(Vec<u8>, usize)> {
    let top = fields(model)?;
    let mut graphs = top.iter().filter(|f| f.number == MODEL_GRAPH);
    let graph = graphs.next()?;
    if graphs.next().is_some() || graph.wire != LEN {
        return None;
    }
    let (pruned, removed) = prune_graph(graph.payload, output)?;
    let mut out = Vec::with_capacity(model.len());
    for f in &top {
        if f.number == MODEL_GRAPH {
            put_len_field(&mut out, MODEL_GRAPH, &pruned);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Some((out, removed))
}

// Field numbers from onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_NODE: u64 = 1;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
const GRAPH_VALUE_INFO: u64 = 13;
const NODE_INPUT: u64 = 1;
const NODE_OUTPUT: u64 = 2;
const NODE_ATTRIBUTE: u64 = 5;
const ATTRIBUTE_GRAPH: u64 = 6;
const ATTRIBUTE_GRAPHS: u64 = 11;
const TENSOR_NAME: u64 = 8;
const VALUE_INFO_NAME: u64 = 1;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

struct Node<'a> {
    inputs: Vec<&'a str>,
    outputs: Vec<&'a str>,
}

fn prune_graph(graph: &[u8], output: &str) -> Option<(Vec<u8>, usize)> {
    let fields = fields(graph)?;
    let outputs: Vec<&str> = fields
        .iter()
        .filter(|f| f.number == GRAPH_OUTPUT)
        .map(|f| name_of(f, VALUE_INFO_NAME))
        .collect::<Option<_>>()?;
    if !outputs.contains(&output) {
        return None;
    }
    let mut nodes = Vec::new();
    for f in fields.iter().filter(|f| f.number == GRAPH_NODE) {
        let node_fields = self::fields(f.payload)?;
        for a in node_fields.iter().filter(|a| a.number == NODE_ATTRIBUTE) {
            if self::fields(a.payload)?
                .iter()
                .any(|x| x.number == ATTRIBUTE_GRAPH || x.number == ATTRIBUTE_GRAPHS)
            {
                return None;
            }
        }
        nodes.push(Node {
            inputs: texts(&node_fields, NODE_INPUT)?,
            outputs: texts(&node_fields, NODE_OUTPUT)?,
        });
    }
    // Walk back from the output until nothing more is needed (ONNX lists nodes in
    // topological order, but this does not rely on it).
    let mut needed: HashSet<&str> = HashSet::from([output]);
    let mut live = vec![false; nodes.len()];
    loop {
        let mut grew = false;
        for (node, live) in nodes.iter().zip(live.iter_mut()) {
            if !*live && node.outputs.iter().any(|o| needed.contains(o)) {
                *live = true;
                grew = true;
                needed.extend(node.inputs.iter().filter(|i| !i.is_empty()));
            }
        }
        if !grew {
            break;
        }
    }
    let removed = live.iter().filter(|l| !**l).count();
    if removed == 0 && outputs.len() == 1 {
        return None;
    }
    let produced: HashSet<&str> = nodes
        .iter()
        .zip(&live)
        .filter(|(_, l)| **l)
        .flat_map(|(n, _)| n.outputs.iter().copied())
        .collect();
    let graph_inputs: HashSet<&str> = fields
        .iter()
        .filter(|f| f.number == GRAPH_INPUT)
        .filter_map(|f| name_of(f, VALUE_INFO_NAME))
        .collect();
    let mut out = Vec::with_capacity(graph.len());
    let mut node_index = 0;
    for f in &fields {
        let keep = match f.number {
            GRAPH_NODE => {
                node_index += 1;
                live[node_index - 1]
            }
            GRAPH_OUTPUT => name_of(f, VALUE_INFO_NAME) == Some(output),
            // An initializer that is also a graph input can be fed instead: keep it.
            GRAPH_INITIALIZER => name_of(f, TENSOR_NAME)
                .is_none_or(|n| needed.contains(n) || graph_inputs.contains(n)),
            GRAPH_VALUE_INFO => name_of(f, VALUE_INFO_NAME)
                .is_none_or(|n| needed.contains(n) || produced.contains(n)),
            _ => true,
        };
        if keep {
            out.extend_from_slice(f.raw);
        }
    }
    Some((out, removed))
}

/// The first string of field `number` in the message `f` holds: a tensor's or value's name.
fn name_of<'a>(f: &Field<'a>, number: u64) -> Option<&'a str> {
    texts(&fields(f.payload)?, number)?.into_iter().next()
}

/// One field of a message: its number and wire type, its bytes as written (tag included),
/// and its payload when length-delimited.
struct Field<'a> {
    number: u64,
    wire: u8,
    raw: &'a [u8],
    payload: &'a [u8],
}

/// The fields of a message in order; `None` if the bytes are not a well-formed message
/// (groups, the deprecated wire types 3 and 4, count as not understood).
fn fields(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let tag = varint(buf, &mut pos)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        if number == 0 {
            return None;
        }
        let payload = match wire {
            VARINT => {
                varint(buf, &mut pos)?;
                &buf[pos..pos]
            }
            FIXED64 | FIXED32 => {
                let n = if wire == FIXED64 { 8 } else { 4 };
                let end = pos.checked_add(n).filter(|&e| e <= buf.len())?;
                pos = end;
                &buf[pos..pos]
            }
            LEN => {
                let n = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(n).filter(|&e| e <= buf.len())?;
                let p = &buf[pos..end];
                pos = end;
                p
            }
            _ => return None,
        };
        out.push(Field {
            number,
            wire,
            raw: &buf[start..pos],
            payload,
        });
    }
    Some(out)
}

/// The UTF-8 strings of field `number` among a message's `fields`.
fn texts<'a>(fields: &[Field<'a>], number: u64) -> Option<Vec<&'a str>> {
    fields
        .iter()
        .filter(|f| f.number == number)
        .map(|f| {
            (f.wire == LEN)
                .then(|| std::str::from_utf8(f.payload).ok())
                .flatten()
        })
        .collect()
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_len_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | u64::from(LEN));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_field(number: u64, s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_len_field(&mut out, number, s.as_bytes());
        out
    }

    fn node(inputs: &[&str], outputs: &[&str], op: &str) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            n.extend(string_field(NODE_INPUT, i));
        }
        for o in outputs {
            n.extend(string_field(NODE_OUTPUT, o));
        }
        n.extend(string_field(4, op));
        let mut out = Vec::new();
        put_len_field(&mut out, GRAPH_NODE, &n);
        out
    }

    fn named(number: u64, name_field: u64, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        put_len_field(&mut out, number, &string_field(name_field, name));
        out
    }

    fn model(graph: &[u8]) -> Vec<u8> {
        // ir_version = 8 (a varint field before the graph), then the graph, then an opset.
        let mut m = vec![0x08, 0x08];
        put_len_field(&mut m, MODEL_GRAPH, graph);
        m.extend(named(8, 1, "ai.onnx"));
        m
    }

    fn graph_parts(model: &[u8]) -> (Vec<Vec<String>>, Vec<String>, Vec<String>) {
        let top = fields(model).expect("model");
        let graph = top.iter().find(|f| f.number == MODEL_GRAPH).expect("graph");
        let g = fields(graph.payload).expect("graph fields");
        let nodes = g
            .iter()
            .filter(|f| f.number == GRAPH_NODE)
            .map(|f| {
                texts(&fields(f.payload).expect("node"), NODE_OUTPUT)
                    .expect("outputs")
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        let names = |number, name_field| {
            g.iter()
                .filter(|f| f.number == number)
                .map(|f| name_of(f, name_field).expect("name").to_owned())
                .collect()
        };
        (
            nodes,
            names(GRAPH_OUTPUT, VALUE_INFO_NAME),
            names(GRAPH_INITIALIZER, TENSOR_NAME),
        )
    }

    /// A classifier's shape: probabilities feed a label branch the service never reads.
    fn classifier() -> Vec<u8> {
        let mut g = Vec::new();
        g.extend(node(&["x", "w"], &["logits"], "MatMul"));
        g.extend(node(&["logits"], &["probabilities"], "Sigmoid"));
        g.extend(node(&["probabilities"], &["argmax"], "ArgMax"));
        g.extend(node(
            &["classes", "argmax"],
            &["label"],
            "ArrayFeatureExtractor",
        ));
        g.extend(string_field(2, "graph name"));
        g.extend(named(GRAPH_INITIALIZER, TENSOR_NAME, "w"));
        g.extend(named(GRAPH_INITIALIZER, TENSOR_NAME, "classes"));
        g.extend(named(GRAPH_INPUT, VALUE_INFO_NAME, "x"));
        g.extend(named(GRAPH_OUTPUT, VALUE_INFO_NAME, "label"));
        g.extend(named(GRAPH_OUTPUT, VALUE_INFO_NAME, "probabilities"));
        model(&g)
    }

    #[test]
    fn keeps_what_the_output_needs_and_every_other_field() {
        let original = classifier();
        let (pruned, removed) = prune_to_output(&original, "probabilities").expect("pruned");
        assert_eq!(removed, 2);
        let (nodes, outputs, initializers) = graph_parts(&pruned);
        assert_eq!(nodes, vec![vec!["logits"], vec!["probabilities"]]);
        assert_eq!(outputs, vec!["probabilities"]);
        assert_eq!(initializers, vec!["w"]);
        // Fields the pruning does not touch come through byte for byte, in order.
        let top = fields(&pruned).expect("model");
        assert_eq!(top[0].raw, [0x08, 0x08]);
        assert_eq!(top[2].raw, named(8, 1, "ai.onnx").as_slice());
        let graph = fields(top[1].payload).expect("graph");
        assert!(graph.iter().any(|f| f.raw == string_field(2, "graph name")));
        assert!(
            graph
                .iter()
                .any(|f| f.raw == named(GRAPH_INPUT, VALUE_INFO_NAME, "x"))
        );
    }

    #[test]
    fn leaves_alone_what_it_cannot_or_need_not_prune() {
        let original = classifier();
        // Pruning to the label keeps every node, but drops the other output.
        let (pruned, removed) = prune_to_output(&original, "label").expect("pruned");
        assert_eq!(removed, 0);
        assert_eq!(graph_parts(&pruned).1, vec!["label"]);
        // Nothing to drop.
        let (once, _) = prune_to_output(&original, "probabilities").expect("pruned");
        assert!(prune_to_output(&once, "probabilities").is_none());
        // An output the graph does not have: the spec check reports it on the original.
        assert!(prune_to_output(&original, "score").is_none());
        // Not a protobuf message.
        assert!(prune_to_output(b"\xff\xff\xff", "probabilities").is_none());
        assert!(prune_to_output(&original[..original.len() - 3], "probabilities").is_none());
        // A subgraph may read any outer value: not pruned.
        let mut attribute = Vec::new();
        put_len_field(&mut attribute, ATTRIBUTE_GRAPH, &[]);
        let mut n = string_field(NODE_OUTPUT, "y");
        put_len_field(&mut n, NODE_ATTRIBUTE, &attribute);
        let mut g = Vec::new();
        put_len_field(&mut g, GRAPH_NODE, &n);
        g.extend(node(&["x"], &["z"], "Relu"));
        g.extend(named(GRAPH_OUTPUT, VALUE_INFO_NAME, "z"));
        assert!(prune_to_output(&model(&g), "z").is_none());
    }
}
