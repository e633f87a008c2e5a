//! Per-node loads and a fast index of the nodes that would finish first.
//!
//! The node that finishes a rank of weight `w` first minimises
//! `(load + w) / capacity`, which depends on `w`. Nodes are grouped in
//! capacity classes (about 2% wide); inside a class the least loaded node is
//! the best, so a query looks at the head of one min-heap per class:
//! `O(classes × log N)`. Heaps are updated lazily: an entry is valid while it
//! carries the node's current load.

use super::{NodeId, NodeInfo, RankClass, RankInfo, finish};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Classes per doubling of capacity.
const CLASSES_PER_OCTAVE: f64 = 32.0;

pub(crate) struct Loads {
    pub load: Vec<f64>,
    pub mem: Vec<u64>,
    pub io: Vec<u32>,
    pub cap: Vec<f64>,
}

impl Loads {
    pub fn new(nodes: &[NodeInfo]) -> Self {
        Loads {
            load: vec![0.0; nodes.len()],
            mem: vec![0; nodes.len()],
            io: vec![0; nodes.len()],
            cap: nodes.iter().map(NodeInfo::effective_capacity).collect(),
        }
    }

    pub fn finish(&self, n: NodeId) -> f64 {
        finish(self.load[n as usize], self.cap[n as usize])
    }

    /// Whether node `n` can take `rank` (capacity, memory, I/O slots).
    pub fn fits(&self, nodes: &[NodeInfo], n: NodeId, rank: &RankInfo) -> bool {
        let i = n as usize;
        self.cap[i] > 0.0
            && nodes[i].memory_bytes - self.mem[i].min(nodes[i].memory_bytes) >= rank.state_bytes
            && (rank.class == RankClass::Cpu || self.io[i] < nodes[i].io_slots)
    }

    pub fn add(&mut self, n: NodeId, rank: &RankInfo) {
        let i = n as usize;
        self.load[i] += rank.weight;
        self.mem[i] = self.mem[i].saturating_add(rank.state_bytes);
        self.io[i] += u32::from(rank.class == RankClass::Io);
    }

    pub fn remove(&mut self, n: NodeId, rank: &RankInfo) {
        let i = n as usize;
        self.load[i] = (self.load[i] - rank.weight).max(0.0);
        self.mem[i] = self.mem[i].saturating_sub(rank.state_bytes);
        self.io[i] -= u32::from(rank.class == RankClass::Io).min(self.io[i]);
    }

    pub fn step_time(&self) -> f64 {
        (0..self.load.len() as NodeId)
            .map(|n| self.finish(n))
            .fold(0.0, f64::max)
    }
}

type Entry = Reverse<(u64, NodeId)>;

pub(crate) struct Targets {
    classes: Vec<BinaryHeap<Entry>>,
    class_of: Vec<u32>,
    stash: Vec<Entry>,
}

/// Non-negative floats order like their bit patterns.
fn key(load: f64) -> u64 {
    load.max(0.0).to_bits()
}

impl Targets {
    pub fn new(loads: &Loads) -> Self {
        let mut index: HashMap<i64, u32> = HashMap::new();
        let mut classes: Vec<BinaryHeap<Entry>> = Vec::new();
        let mut class_of = vec![u32::MAX; loads.cap.len()];
        for (n, &c) in loads.cap.iter().enumerate() {
            if c <= 0.0 {
                continue;
            }
            let k = (c.log2() * CLASSES_PER_OCTAVE).floor() as i64;
            let class = *index.entry(k).or_insert_with(|| {
                classes.push(BinaryHeap::new());
                classes.len() as u32 - 1
            });
            class_of[n] = class;
            classes[class as usize].push(Reverse((key(loads.load[n]), n as NodeId)));
        }
        Targets {
            classes,
            class_of,
            stash: Vec::new(),
        }
    }

    /// Call after node `n`'s load changed.
    pub fn update(&mut self, loads: &Loads, n: NodeId) {
        let class = self.class_of[n as usize];
        if class == u32::MAX {
            return;
        }
        let entry = Reverse((key(loads.load[n as usize]), n));
        let heap = &mut self.classes[class as usize];
        // The usual case (the node just chosen is its class's head): replace
        // in place, so the heap does not fill with stale entries.
        if heap.peek().is_some_and(|top| top.0.1 == n) {
            if let Some(mut top) = heap.peek_mut() {
                *top = entry;
            }
        } else {
            heap.push(entry);
        }
    }

    /// The node that would finish `rank` first, other than those in `exclude`, and its finish time.
    pub fn best(
        &mut self,
        loads: &Loads,
        nodes: &[NodeInfo],
        rank: &RankInfo,
        exclude: [Option<NodeId>; 2],
    ) -> Option<(NodeId, f64)> {
        let mut best: Option<(NodeId, f64)> = None;
        for class in 0..self.classes.len() {
            let heap = &mut self.classes[class];
            let mut found = None;
            while let Some(&Reverse((k, n))) = heap.peek() {
                if k != key(loads.load[n as usize]) {
                    heap.pop(); // stale
                    continue;
                }
                if !exclude.contains(&Some(n)) && loads.fits(nodes, n, rank) {
                    found = Some(n);
                    break;
                }
                self.stash.push(heap.pop().expect("peeked"));
            }
            heap.extend(self.stash.drain(..));
            if let Some(n) = found {
                let f = (loads.load[n as usize] + rank.weight) / loads.cap[n as usize];
                if best.is_none_or(|(_, bf)| f < bf) {
                    best = Some((n, f));
                }
            }
        }
        best
    }
}
