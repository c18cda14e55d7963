//! A price-time priority limit order book for several instruments, with a binary wire
//! format, execution reports, a deterministic hash of the resting orders (to compare a
//! book before and after recovery), snapshots, and a naive reference matcher for tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes order ids (already unique integers) with one multiply: SipHash's defence
/// against chosen keys buys nothing for ids the engine assigns, and costs most of an
/// order's matching time.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = (id ^ (id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Ids = BuildHasherDefault<IdHasher>;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Bids.
    Buy,
    /// Asks.
    Sell,
}

/// A command to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A new limit order.
    New {
        /// Instrument id.
        instrument: u32,
        /// Client-chosen order id, unique per engine.
        order: u64,
        /// Side.
        side: Side,
        /// Limit price in ticks.
        price: u64,
        /// Quantity.
        quantity: u64,
    },
    /// Cancel a resting order.
    Cancel {
        /// Instrument id.
        instrument: u32,
        /// The order to cancel.
        order: u64,
    },
}

/// Why a command was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The instrument is not traded here.
    UnknownInstrument,
    /// Quantity zero.
    ZeroQuantity,
    /// Price zero.
    ZeroPrice,
    /// The order id is already in use.
    DuplicateOrder,
    /// Cancel of an order that is not resting.
    UnknownOrder,
    /// The bytes are not a command.
    Malformed,
}

/// What the engine reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The new order was accepted.
    Accepted {
        /// Order id.
        order: u64,
    },
    /// A trade: `taker` (the incoming order) against `maker` (the resting one), at the
    /// maker's price.
    Fill {
        /// Incoming order.
        taker: u64,
        /// Resting order.
        maker: u64,
        /// Trade price.
        price: u64,
        /// Trade quantity.
        quantity: u64,
    },
    /// The remainder of the new order rests in the book.
    Rested {
        /// Order id.
        order: u64,
        /// Quantity resting.
        quantity: u64,
    },
    /// The order was cancelled.
    Cancelled {
        /// Order id.
        order: u64,
    },
    /// The command was rejected.
    Rejected {
        /// Order id (0 when it could not be read).
        order: u64,
        /// Why.
        reason: Reject,
    },
}

/// No node.
const NIL: u32 = u32::MAX;

/// A resting order, a node of its price level's list (time priority: head first).
#[derive(Debug, Clone, Copy)]
struct Node {
    order: u64,
    quantity: u64,
    prev: u32,
    next: u32,
}

/// A price level: a doubly linked list of nodes in arrival order.
#[derive(Debug, Clone, Copy)]
struct Level {
    head: u32,
    tail: u32,
}

/// One instrument's book: price levels by price.
#[derive(Debug, Default, Clone)]
struct Book {
    bids: BTreeMap<u64, Level>,
    asks: BTreeMap<u64, Level>,
}

/// Where a resting order lives.
#[derive(Debug, Clone, Copy)]
struct Placed {
    instrument: u32,
    side: Side,
    price: u64,
    node: u32,
}

/// The books of every instrument, the resting orders (a slab of list nodes, so a cancel
/// unlinks in O(1)), and the order index.
#[derive(Debug, Clone)]
pub struct Exchange {
    books: Vec<Book>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: HashMap<u64, Placed, Ids>,
    /// Every order id ever accepted (ids are never reused).
    seen: HashSet<u64, Ids>,
}

impl Exchange {
    /// An exchange trading instruments `0 .. instruments`.
    pub fn new(instruments: u32) -> Self {
        Self {
            books: vec![Book::default(); instruments as usize],
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            seen: HashSet::default(),
        }
    }

    fn alloc(&mut self, order: u64, quantity: u64) -> u32 {
        let node = Node {
            order,
            quantity,
            prev: NIL,
            next: NIL,
        };
        match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Appends `order` at the tail of its level (creating the level).
    fn rest(&mut self, instrument: u32, side: Side, price: u64, order: u64, quantity: u64) {
        let n = self.alloc(order, quantity);
        let book = &mut self.books[instrument as usize];
        let levels = match side {
            Side::Buy => &mut book.bids,
            Side::Sell => &mut book.asks,
        };
        match levels.get_mut(&price) {
            Some(level) => {
                let tail = level.tail;
                self.nodes[tail as usize].next = n;
                self.nodes[n as usize].prev = tail;
                level.tail = n;
            }
            None => {
                levels.insert(price, Level { head: n, tail: n });
            }
        }
        self.index.insert(
            order,
            Placed {
                instrument,
                side,
                price,
                node: n,
            },
        );
    }

    /// Unlinks node `n` from its level (removing an emptied level) and frees it.
    fn unlink(&mut self, instrument: u32, side: Side, price: u64, n: u32) {
        let Node { prev, next, .. } = self.nodes[n as usize];
        let book = &mut self.books[instrument as usize];
        let levels = match side {
            Side::Buy => &mut book.bids,
            Side::Sell => &mut book.asks,
        };
        let level = levels
            .get_mut(&price)
            .expect("a resting order's level exists");
        if prev == NIL {
            level.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            level.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        if level.head == NIL {
            levels.remove(&price);
        }
        self.free.push(n);
    }

    /// Applies one command, appending its reports to `out`.
    pub fn apply(&mut self, command: &Command, out: &mut Vec<Report>) {
        match *command {
            Command::New {
                instrument,
                order,
                side,
                price,
                quantity,
            } => {
                let reject = if instrument as usize >= self.books.len() {
                    Some(Reject::UnknownInstrument)
                } else if quantity == 0 {
                    Some(Reject::ZeroQuantity)
                } else if price == 0 {
                    Some(Reject::ZeroPrice)
                } else if self.seen.contains(&order) {
                    Some(Reject::DuplicateOrder)
                } else {
                    None
                };
                if let Some(reason) = reject {
                    out.push(Report::Rejected { order, reason });
                    return;
                }
                self.seen.insert(order);
                out.push(Report::Accepted { order });
                let mut left = quantity;
                let maker_side = match side {
                    Side::Buy => Side::Sell,
                    Side::Sell => Side::Buy,
                };
                while left > 0 {
                    let book = &self.books[instrument as usize];
                    let best = match side {
                        Side::Buy => book.asks.iter().next().filter(|(&p, _)| p <= price),
                        Side::Sell => book.bids.iter().next_back().filter(|(&p, _)| p >= price),
                    };
                    let Some((&level_price, level)) = best else {
                        break;
                    };
                    let n = level.head;
                    let maker = &mut self.nodes[n as usize];
                    let traded = left.min(maker.quantity);
                    left -= traded;
                    maker.quantity -= traded;
                    out.push(Report::Fill {
                        taker: order,
                        maker: maker.order,
                        price: level_price,
                        quantity: traded,
                    });
                    if maker.quantity == 0 {
                        let gone = maker.order;
                        self.index.remove(&gone);
                        self.unlink(instrument, maker_side, level_price, n);
                    }
                }
                if left > 0 {
                    self.rest(instrument, side, price, order, left);
                    out.push(Report::Rested {
                        order,
                        quantity: left,
                    });
                }
            }
            Command::Cancel { instrument, order } => match self.index.get(&order).copied() {
                Some(p) if p.instrument == instrument => {
                    self.index.remove(&order);
                    self.unlink(p.instrument, p.side, p.price, p.node);
                    out.push(Report::Cancelled { order });
                }
                _ => out.push(Report::Rejected {
                    order,
                    reason: Reject::UnknownOrder,
                }),
            },
        }
    }

    /// The orders of one level, head first, as (order, quantity).
    fn level_orders(&self, level: &Level) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut n = level.head;
        std::iter::from_fn(move || {
            (n != NIL).then(|| {
                let node = self.nodes[n as usize];
                n = node.next;
                (node.order, node.quantity)
            })
        })
    }

    /// Resting orders of `instrument` in priority order: bids best first, then asks best
    /// first, each as (side, price, order, quantity).
    pub fn resting(&self, instrument: u32) -> Vec<(Side, u64, u64, u64)> {
        let Some(book) = self.books.get(instrument as usize) else {
            return Vec::new();
        };
        let bids = book.bids.iter().rev().flat_map(|(p, l)| {
            self.level_orders(l)
                .map(move |(o, q)| (Side::Buy, *p, o, q))
        });
        let asks = book.asks.iter().flat_map(|(p, l)| {
            self.level_orders(l)
                .map(move |(o, q)| (Side::Sell, *p, o, q))
        });
        bids.chain(asks).collect()
    }

    /// A hash (FNV-1a, 64-bit) of every instrument's resting orders in priority order:
    /// equal books hash equal on any machine.
    pub fn book_hash(&self) -> u64 {
        let mut h = Fnv::default();
        for i in 0..self.books.len() as u32 {
            h.write(&i.to_le_bytes());
            for (side, price, order, quantity) in self.resting(i) {
                h.write(&[side as u8]);
                h.write(&price.to_le_bytes());
                h.write(&order.to_le_bytes());
                h.write(&quantity.to_le_bytes());
            }
        }
        h.0
    }

    /// Orders resting across all instruments.
    pub fn resting_orders(&self) -> usize {
        self.index.len()
    }
}

/// FNV-1a, 64-bit.
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Size of an encoded command.
pub const COMMAND_LEN: usize = 30;

impl Command {
    /// Encodes into the fixed 30-byte wire form: kind (1: new, 2: cancel), instrument u32,
    /// order u64, side (1 buy, 2 sell), price u64, quantity u64, all little-endian.
    pub fn encode(&self) -> [u8; COMMAND_LEN] {
        let mut b = [0u8; COMMAND_LEN];
        match *self {
            Command::New {
                instrument,
                order,
                side,
                price,
                quantity,
            } => {
                b[0] = 1;
                b[1..5].copy_from_slice(&instrument.to_le_bytes());
                b[5..13].copy_from_slice(&order.to_le_bytes());
                b[13] = match side {
                    Side::Buy => 1,
                    Side::Sell => 2,
                };
                b[14..22].copy_from_slice(&price.to_le_bytes());
                b[22..30].copy_from_slice(&quantity.to_le_bytes());
            }
            Command::Cancel { instrument, order } => {
                b[0] = 2;
                b[1..5].copy_from_slice(&instrument.to_le_bytes());
                b[5..13].copy_from_slice(&order.to_le_bytes());
            }
        }
        b
    }

    /// Decodes the wire form; `Err(order id if readable)` for anything else.
    pub fn decode(bytes: &[u8]) -> Result<Command, u64> {
        if bytes.len() != COMMAND_LEN {
            return Err(0);
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let (instrument, order) = (u32_at(1), u64_at(5));
        match bytes[0] {
            1 => {
                let side = match bytes[13] {
                    1 => Side::Buy,
                    2 => Side::Sell,
                    _ => return Err(order),
                };
                Ok(Command::New {
                    instrument,
                    order,
                    side,
                    price: u64_at(14),
                    quantity: u64_at(22),
                })
            }
            2 => Ok(Command::Cancel { instrument, order }),
            _ => Err(order),
        }
    }
}

/// The simplest matcher that could be right: a flat list of resting orders, searched in
/// full for each match. Tests compare [`Exchange`] against it, so it shares no code with
/// it (its reject rules are written out again on purpose).
#[derive(Debug, Clone)]
pub struct ReferenceMatcher {
    instruments: u32,
    /// (instrument, side, price, arrival, order, quantity)
    resting: Vec<(u32, Side, u64, u64, u64, u64)>,
    arrivals: u64,
    seen: std::collections::HashSet<u64>,
}

impl ReferenceMatcher {
    /// A matcher for instruments `0 .. instruments`.
    pub fn new(instruments: u32) -> Self {
        Self {
            instruments,
            resting: Vec::new(),
            arrivals: 0,
            seen: Default::default(),
        }
    }

    /// Applies one command, appending its reports.
    pub fn apply(&mut self, command: &Command, out: &mut Vec<Report>) {
        match *command {
            Command::New {
                instrument,
                order,
                side,
                price,
                quantity,
            } => {
                let reason = if instrument >= self.instruments {
                    Some(Reject::UnknownInstrument)
                } else if quantity == 0 {
                    Some(Reject::ZeroQuantity)
                } else if price == 0 {
                    Some(Reject::ZeroPrice)
                } else if !self.seen.insert(order) {
                    Some(Reject::DuplicateOrder)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    out.push(Report::Rejected { order, reason });
                    return;
                }
                out.push(Report::Accepted { order });
                let mut left = quantity;
                loop {
                    if left == 0 {
                        break;
                    }
                    let best = self
                        .resting
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| {
                            r.0 == instrument
                                && r.1 != side
                                && match side {
                                    Side::Buy => r.2 <= price,
                                    Side::Sell => r.2 >= price,
                                }
                        })
                        .min_by_key(|(_, r)| {
                            (
                                match side {
                                    Side::Buy => r.2,
                                    Side::Sell => u64::MAX - r.2,
                                },
                                r.3,
                            )
                        })
                        .map(|(i, _)| i);
                    let Some(i) = best else { break };
                    let traded = left.min(self.resting[i].5);
                    left -= traded;
                    self.resting[i].5 -= traded;
                    out.push(Report::Fill {
                        taker: order,
                        maker: self.resting[i].4,
                        price: self.resting[i].2,
                        quantity: traded,
                    });
                    if self.resting[i].5 == 0 {
                        self.resting.remove(i);
                    }
                }
                if left > 0 {
                    self.arrivals += 1;
                    self.resting
                        .push((instrument, side, price, self.arrivals, order, left));
                    out.push(Report::Rested {
                        order,
                        quantity: left,
                    });
                }
            }
            Command::Cancel { instrument, order } => {
                match self
                    .resting
                    .iter()
                    .position(|r| r.4 == order && r.0 == instrument)
                {
                    Some(i) => {
                        self.resting.remove(i);
                        out.push(Report::Cancelled { order });
                    }
                    None => out.push(Report::Rejected {
                        order,
                        reason: Reject::UnknownOrder,
                    }),
                }
            }
        }
    }
}

/// A small xorshift generator (tests and the load generator; not for anything secret).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A random command stream over instrument ids `0 ..= instruments` (the last one unknown),
/// with cancels of earlier orders, some duplicate ids and some zero quantities, so every
/// report kind occurs. New order ids count up from `first_id`.
pub fn random_commands(seed: u64, n: usize, instruments: u32, first_id: u64) -> Vec<Command> {
    let mut rng = Rng(seed | 1);
    let mut ids = Vec::new();
    (0..n)
        .map(|i| {
            if !ids.is_empty() && rng.below(5) == 0 {
                let order = ids[rng.below(ids.len() as u64) as usize];
                Command::Cancel {
                    instrument: rng.below(u64::from(instruments) + 1) as u32,
                    order,
                }
            } else {
                let order = if rng.below(100) == 0 && !ids.is_empty() {
                    ids[0]
                } else {
                    first_id + i as u64
                };
                ids.push(order);
                Command::New {
                    instrument: rng.below(u64::from(instruments) + 1) as u32,
                    order,
                    side: if rng.below(2) == 0 {
                        Side::Buy
                    } else {
                        Side::Sell
                    },
                    price: 95 + rng.below(11),
                    quantity: rng.below(20),
                }
            }
        })
        .collect()
}

/// Size of an encoded report.
pub const REPORT_LEN: usize = 33;

impl Report {
    /// The order the report is about (the taker, for a fill).
    pub fn order(&self) -> u64 {
        match *self {
            Report::Accepted { order }
            | Report::Rested { order, .. }
            | Report::Cancelled { order }
            | Report::Rejected { order, .. } => order,
            Report::Fill { taker, .. } => taker,
        }
    }

    /// Appends the fixed 33-byte wire form: kind u8 (1 accepted, 2 fill, 3 rested,
    /// 4 cancelled, 5 rejected), order u64, then three u64 fields (fill: maker, price,
    /// quantity; rested: quantity; rejected: reason code), little-endian.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, order, a, b, c) = match *self {
            Report::Accepted { order } => (1u8, order, 0, 0, 0),
            Report::Fill {
                taker,
                maker,
                price,
                quantity,
            } => (2, taker, maker, price, quantity),
            Report::Rested { order, quantity } => (3, order, quantity, 0, 0),
            Report::Cancelled { order } => (4, order, 0, 0, 0),
            Report::Rejected { order, reason } => (5, order, reason as u64, 0, 0),
        };
        out.push(kind);
        for v in [order, a, b, c] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Decodes one report written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Report> {
        if bytes.len() != REPORT_LEN {
            return None;
        }
        let at =
            |i: usize| u64::from_le_bytes(bytes[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        let (order, a, b, c) = (at(0), at(1), at(2), at(3));
        Some(match bytes[0] {
            1 => Report::Accepted { order },
            2 => Report::Fill {
                taker: order,
                maker: a,
                price: b,
                quantity: c,
            },
            3 => Report::Rested { order, quantity: a },
            4 => Report::Cancelled { order },
            5 => Report::Rejected {
                order,
                reason: match a {
                    0 => Reject::UnknownInstrument,
                    1 => Reject::ZeroQuantity,
                    2 => Reject::ZeroPrice,
                    3 => Reject::DuplicateOrder,
                    4 => Reject::UnknownOrder,
                    _ => Reject::Malformed,
                },
            },
            _ => return None,
        })
    }
}

impl Exchange {
    /// Number of instruments.
    pub fn instruments(&self) -> u32 {
        self.books.len() as u32
    }

    /// Writes the whole state: instruments, every order id ever accepted, and each
    /// instrument's resting orders in priority order.
    pub fn save(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.instruments().to_le_bytes());
        let mut seen: Vec<u64> = self.seen.iter().copied().collect();
        seen.sort_unstable();
        out.extend_from_slice(&(seen.len() as u64).to_le_bytes());
        for id in seen {
            out.extend_from_slice(&id.to_le_bytes());
        }
        for i in 0..self.instruments() {
            let resting = self.resting(i);
            out.extend_from_slice(&(resting.len() as u64).to_le_bytes());
            for (side, price, order, quantity) in resting {
                out.push(side as u8);
                for v in [price, order, quantity] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }

    /// Reads a state written by [`save`](Self::save).
    pub fn load(bytes: &[u8]) -> Option<Exchange> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = bytes.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let instruments = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut ex = Exchange::new(instruments);
        let seen = u64::from_le_bytes(take(8)?.try_into().ok()?);
        for _ in 0..seen {
            ex.seen
                .insert(u64::from_le_bytes(take(8)?.try_into().ok()?));
        }
        for i in 0..instruments {
            let n = u64::from_le_bytes(take(8)?.try_into().ok()?);
            for _ in 0..n {
                let side = if take(1)?[0] == Side::Buy as u8 {
                    Side::Buy
                } else {
                    Side::Sell
                };
                let mut v = [0u64; 3];
                for x in &mut v {
                    *x = u64::from_le_bytes(take(8)?.try_into().ok()?);
                }
                let [price, order, quantity] = v;
                // Saved in priority order, so appending rebuilds each level's time order.
                ex.rest(i, side, price, order, quantity);
            }
        }
        (at == bytes.len()).then_some(ex)
    }
}

impl ReferenceMatcher {
    /// The same hash as [`Exchange::book_hash`], computed from the flat list.
    pub fn book_hash(&self) -> u64 {
        let mut h = Fnv::default();
        for i in 0..self.instruments {
            h.write(&i.to_le_bytes());
            let mut mine: Vec<_> = self.resting.iter().filter(|r| r.0 == i).collect();
            // Bids best (highest) first, then asks best (lowest) first; time priority within.
            mine.sort_by_key(|r| match r.1 {
                Side::Buy => (0, u64::MAX - r.2, r.3),
                Side::Sell => (1, r.2, r.3),
            });
            for r in mine {
                h.write(&[r.1 as u8]);
                h.write(&r.2.to_le_bytes());
                h.write(&r.4.to_le_bytes());
                h.write(&r.5.to_le_bytes());
            }
        }
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_on_random_streams() {
        for seed in 1..20 {
            let commands = random_commands(seed * 7919, 5000, 3, 1);
            let (mut a, mut b) = (Exchange::new(3), ReferenceMatcher::new(3));
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            for c in &commands {
                a.apply(c, &mut ra);
                b.apply(c, &mut rb);
                assert_eq!(ra, rb, "seed {seed} after {c:?}");
                assert_eq!(a.book_hash(), b.book_hash(), "seed {seed} after {c:?}");
                ra.clear();
                rb.clear();
            }
            assert!(a.resting_orders() > 0);
        }
    }

    #[test]
    fn wire_round_trip_and_garbage() {
        for c in random_commands(42, 200, 2, 1) {
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        assert_eq!(
            Command::decode(&[9; COMMAND_LEN]),
            Err(u64::from_le_bytes([9; 8]))
        );
        assert_eq!(Command::decode(&[1, 2, 3]), Err(0));
    }

    #[test]
    fn snapshots_and_reports_round_trip() {
        let mut ex = Exchange::new(3);
        let mut out = Vec::new();
        for c in random_commands(5, 3000, 3, 1) {
            ex.apply(&c, &mut out);
        }
        for r in &out {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Report::decode(&b), Some(*r));
        }
        let mut bytes = Vec::new();
        ex.save(&mut bytes);
        let back = Exchange::load(&bytes).expect("loads");
        assert_eq!(back.book_hash(), ex.book_hash());
        // The loaded book keeps matching like the original.
        let (mut a, mut b) = (ex, back);
        for c in random_commands(6, 2000, 3, 1_000_000) {
            let (mut ra, mut rb) = (Vec::new(), Vec::new());
            a.apply(&c, &mut ra);
            b.apply(&c, &mut rb);
            assert_eq!(ra, rb);
        }
        assert!(Exchange::load(&bytes[..bytes.len() - 1]).is_none());
    }

    #[test]
    fn book_hash_tracks_state() {
        let mut a = Exchange::new(1);
        let h0 = a.book_hash();
        let mut out = Vec::new();
        a.apply(
            &Command::New {
                instrument: 0,
                order: 1,
                side: Side::Buy,
                price: 10,
                quantity: 5,
            },
            &mut out,
        );
        assert_ne!(a.book_hash(), h0);
        a.apply(
            &Command::Cancel {
                instrument: 0,
                order: 1,
            },
            &mut out,
        );
        assert_eq!(a.book_hash(), h0);
    }
}
