//! A price-time priority limit order book for several instruments, with a binary wire
//! format, execution reports, a deterministic hash of the resting orders (to compare a
//! book before and after recovery), snapshots, and a naive reference matcher for tests.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes order ids (already unique integers) with one multiply: SipHash's defence
/// against chosen keys buys nothing for ids the engine checks itself, and costs most of
/// an order's matching time.
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
        self.0 = mix(id);
    }
}

type Ids = BuildHasherDefault<IdHasher>;

/// Spreads an id over all 64 bits (a multiply by 2^64 / golden ratio after folding the
/// high half in).
#[inline]
fn mix(id: u64) -> u64 {
    (id ^ (id >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Every order id ever accepted, as bitmaps of 512 consecutive ids (one cache line each)
/// keyed by `id / 512`: ids handed out in sequence cost an eighth of a byte each and the
/// whole set stays in cache, where a set of 8-byte ids outgrows it and costs a cache miss
/// per order. Scattered ids cost a block each (about 80 bytes).
#[derive(Debug, Clone, Default)]
struct IdSet {
    /// Block key (`id / 512`) -> index into `bits`.
    index: HashMap<u64, usize, Ids>,
    bits: Vec<[u64; 8]>,
    /// The block of the last insert, `(key, index)`: ids mostly arrive in order, so most
    /// inserts land in the same block as the one before and skip the map.
    last: Option<(u64, usize)>,
    len: usize,
}

impl IdSet {
    /// Adds `id`; false if it was already there.
    #[inline]
    fn insert(&mut self, id: u64) -> bool {
        let key = id >> 9;
        let at = match self.last {
            Some((k, at)) if k == key => at,
            _ => {
                let bits = &mut self.bits;
                let at = *self.index.entry(key).or_insert_with(|| {
                    bits.push([0; 8]);
                    bits.len() - 1
                });
                self.last = Some((key, at));
                at
            }
        };
        let block = &mut self.bits[at];
        let (word, bit) = (((id >> 6) & 7) as usize, id & 63);
        let fresh = block[word] & (1 << bit) == 0;
        block[word] |= 1 << bit;
        self.len += usize::from(fresh);
        fresh
    }

    /// Every id, ascending.
    fn sorted(&self) -> Vec<u64> {
        let mut keys: Vec<(u64, usize)> = self.index.iter().map(|(&k, &at)| (k, at)).collect();
        keys.sort_unstable();
        let mut ids = Vec::with_capacity(self.len);
        for (k, at) in keys {
            for (w, &bits) in self.bits[at].iter().enumerate() {
                let mut b = bits;
                while b != 0 {
                    ids.push(k << 9 | (w as u64) << 6 | u64::from(b.trailing_zeros()));
                    b &= b - 1;
                }
            }
        }
        ids
    }
}

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

/// A resting order, a node of its price level's list (time priority: head first), with
/// where it rests, so a cancel needs only the order id.
#[derive(Debug, Clone, Copy)]
struct Node {
    order: u64,
    quantity: u64,
    price: u64,
    prev: u32,
    next: u32,
    instrument: u32,
    side: Side,
}

/// A price level: a doubly linked list of nodes in arrival order.
#[derive(Debug, Clone, Copy)]
struct Level {
    head: u32,
    tail: u32,
}

/// One side of a book: its levels sorted with the best price last (bids ascending, asks
/// descending), so the best level is read, and an emptied best level removed, in O(1);
/// a new level is a binary search and a short move (books hold tens of levels, and
/// activity sits near the best).
#[derive(Debug, Default, Clone)]
struct Levels {
    /// Sort keys: the price for bids, its complement for asks (ascending either way).
    keys: Vec<u64>,
    levels: Vec<Level>,
}

impl Levels {
    fn key(side: Side, price: u64) -> u64 {
        match side {
            Side::Buy => price,
            Side::Sell => !price,
        }
    }

    fn price(side: Side, key: u64) -> u64 {
        Self::key(side, key)
    }

    /// The best level as (price, level).
    fn best(&self, side: Side) -> Option<(u64, Level)> {
        Some((Self::price(side, *self.keys.last()?), *self.levels.last()?))
    }

    fn find(&self, side: Side, price: u64) -> Result<usize, usize> {
        let key = Self::key(side, price);
        // The best few levels are the busy ones: look there before searching.
        match self.keys.last() {
            Some(&k) if k == key => Ok(self.keys.len() - 1),
            _ => self.keys.binary_search(&key),
        }
    }

    /// Levels best first, as (price, level).
    fn best_first(&self, side: Side) -> impl Iterator<Item = (u64, Level)> + '_ {
        self.keys
            .iter()
            .zip(&self.levels)
            .rev()
            .map(move |(&k, &l)| (Self::price(side, k), l))
    }
}

/// Order id -> node: open addressing with linear probing, and deletion by shifting the
/// following entries back (no tombstones, so a lookup of an id that has left the book
/// stops at the first empty slot however many orders have come and gone).
///
/// The table holds only resting orders (at most half full), so it stays as small as the
/// book itself.
#[derive(Debug, Clone)]
struct OrderIndex {
    /// (order id, node); node `NIL` marks an empty slot.
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl Default for OrderIndex {
    fn default() -> Self {
        Self {
            slots: vec![(0, NIL); 1024],
            len: 0,
        }
    }
}

impl OrderIndex {
    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, id: u64) -> usize {
        (mix(id) >> 32) as usize & self.mask()
    }

    /// The slot holding `id`, if any.
    fn position(&self, id: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(id);
        loop {
            let (k, v) = self.slots[i];
            if v == NIL {
                return None;
            }
            if k == id {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    #[cfg(test)]
    fn get(&self, id: u64) -> Option<u32> {
        self.position(id).map(|i| self.slots[i].1)
    }

    /// Inserts `id`, which is not present.
    fn insert(&mut self, id: u64, node: u32) {
        debug_assert_ne!(node, NIL);
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.mask();
        let mut i = self.home(id);
        while self.slots[i].1 != NIL {
            debug_assert_ne!(self.slots[i].0, id, "id already indexed");
            i = (i + 1) & mask;
        }
        self.slots[i] = (id, node);
        self.len += 1;
    }

    fn grow(&mut self) {
        let doubled = vec![(0, NIL); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.len = 0;
        for (id, node) in old {
            if node != NIL {
                self.insert(id, node);
            }
        }
    }

    /// Removes `id`, returning its node.
    fn remove(&mut self, id: u64) -> Option<u32> {
        let at = self.position(id)?;
        Some(self.remove_at(at))
    }

    /// Removes the entry at `hole` (a [`position`](Self::position)), returning its node.
    fn remove_at(&mut self, mut hole: usize) -> u32 {
        let mask = self.mask();
        let node = self.slots[hole].1;
        // Shift back every entry of the run after the hole that may move into it (its
        // home is not cyclically within (hole, j]).
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let (k, v) = self.slots[j];
            if v == NIL {
                break;
            }
            let home = self.home(k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = (k, v);
                hole = j;
            }
        }
        self.slots[hole] = (0, NIL);
        self.len -= 1;
        node
    }
}

/// One instrument's book: price levels by price.
#[derive(Debug, Default, Clone)]
struct Book {
    bids: Levels,
    asks: Levels,
}

impl Book {
    fn side(&mut self, side: Side) -> &mut Levels {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

/// The books of every instrument, the resting orders (a slab of list nodes, so a cancel
/// unlinks in O(1)), and the order index.
#[derive(Debug, Clone)]
pub struct Exchange {
    books: Vec<Book>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: OrderIndex,
    /// Every order id ever accepted (ids are never reused).
    seen: IdSet,
}

impl Exchange {
    /// An exchange trading instruments `0 .. instruments`.
    pub fn new(instruments: u32) -> Self {
        Self {
            books: vec![Book::default(); instruments as usize],
            nodes: Vec::new(),
            free: Vec::new(),
            index: OrderIndex::default(),
            seen: IdSet::default(),
        }
    }

    fn alloc(&mut self, node: Node) -> u32 {
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
        let n = self.alloc(Node {
            order,
            quantity,
            price,
            prev: NIL,
            next: NIL,
            instrument,
            side,
        });
        let levels = self.books[instrument as usize].side(side);
        match levels.find(side, price) {
            Ok(at) => {
                let level = &mut levels.levels[at];
                let tail = level.tail;
                level.tail = n;
                self.nodes[tail as usize].next = n;
                self.nodes[n as usize].prev = tail;
            }
            Err(at) => {
                levels.keys.insert(at, Levels::key(side, price));
                levels.levels.insert(at, Level { head: n, tail: n });
            }
        }
        self.index.insert(order, n);
    }

    /// Unlinks node `n` from its level (removing an emptied level) and frees it.
    fn unlink(&mut self, n: u32) {
        let Node {
            prev,
            next,
            instrument,
            side,
            price,
            ..
        } = self.nodes[n as usize];
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let levels = self.books[instrument as usize].side(side);
        let at = levels
            .find(side, price)
            .expect("a resting order's level exists");
        let level = &mut levels.levels[at];
        if prev == NIL {
            level.head = next;
        }
        if next == NIL {
            level.tail = prev;
        }
        if level.head == NIL {
            levels.keys.remove(at);
            levels.levels.remove(at);
        }
        self.free.push(n);
    }

    /// Applies one command, appending its reports to `out`.
    pub fn apply(&mut self, command: &Command, out: &mut Vec<Report>) {
        self.apply_with(command, |r| out.push(r))
    }

    /// Applies one command, handing each report to `report` as it is made (a no-op
    /// closure skips them, as a replay does).
    #[inline]
    pub fn apply_with(&mut self, command: &Command, mut report: impl FnMut(Report)) {
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
                } else if !self.seen.insert(order) {
                    Some(Reject::DuplicateOrder)
                } else {
                    None
                };
                if let Some(reason) = reject {
                    report(Report::Rejected { order, reason });
                    return;
                }
                report(Report::Accepted { order });
                let mut left = quantity;
                let maker_side = match side {
                    Side::Buy => Side::Sell,
                    Side::Sell => Side::Buy,
                };
                while left > 0 {
                    let book = &mut self.books[instrument as usize];
                    let best =
                        book.side(maker_side)
                            .best(maker_side)
                            .filter(|&(p, _)| match side {
                                Side::Buy => p <= price,
                                Side::Sell => p >= price,
                            });
                    let Some((level_price, level)) = best else {
                        break;
                    };
                    let n = level.head;
                    let maker = &mut self.nodes[n as usize];
                    let traded = left.min(maker.quantity);
                    left -= traded;
                    maker.quantity -= traded;
                    report(Report::Fill {
                        taker: order,
                        maker: maker.order,
                        price: level_price,
                        quantity: traded,
                    });
                    if maker.quantity == 0 {
                        let gone = maker.order;
                        self.index.remove(gone);
                        self.unlink(n);
                    }
                }
                if left > 0 {
                    self.rest(instrument, side, price, order, left);
                    report(Report::Rested {
                        order,
                        quantity: left,
                    });
                }
            }
            Command::Cancel { instrument, order } => match self.index.position(order) {
                Some(at)
                    if self.nodes[self.index.slots[at].1 as usize].instrument == instrument =>
                {
                    let n = self.index.remove_at(at);
                    self.unlink(n);
                    report(Report::Cancelled { order });
                }
                _ => report(Report::Rejected {
                    order,
                    reason: Reject::UnknownOrder,
                }),
            },
        }
    }

    /// The orders of one level, head first, as (order, quantity).
    fn level_orders(&self, level: Level) -> impl Iterator<Item = (u64, u64)> + '_ {
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
        let bids = book
            .bids
            .best_first(Side::Buy)
            .flat_map(|(p, l)| self.level_orders(l).map(move |(o, q)| (Side::Buy, p, o, q)));
        let asks = book.asks.best_first(Side::Sell).flat_map(|(p, l)| {
            self.level_orders(l)
                .map(move |(o, q)| (Side::Sell, p, o, q))
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
        self.index.len
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

/// A command stream shaped like a venue's order flow, for measuring against a book of
/// realistic size: prices within a few ticks of a slowly drifting mid (some cross and
/// trade, most rest), and nine orders in ten cancelled after a random lifetime (mean
/// `lifetime` commands; a cancel of an order that traded meanwhile is rejected), so the
/// book holds about `lifetime` orders however long the stream. New order ids count up
/// from `first_id`.
pub fn market_commands(
    seed: u64,
    n: usize,
    instruments: u32,
    first_id: u64,
    lifetime: u64,
) -> Vec<Command> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut rng = Rng(seed | 1);
    let instruments = instruments.max(1);
    let mut mids = vec![10_000u64; instruments as usize];
    let mut due: BinaryHeap<Reverse<(u64, u64, u32)>> = BinaryHeap::new();
    let mut next_id = first_id;
    (0..n as u64)
        .map(|now| {
            if let Some(&Reverse((at, order, instrument))) = due.peek() {
                if at <= now {
                    due.pop();
                    return Command::Cancel { instrument, order };
                }
            }
            let instrument = rng.below(u64::from(instruments)) as u32;
            let mid = &mut mids[instrument as usize];
            match rng.below(16) {
                0 => *mid += 1,
                1 => *mid -= 1,
                _ => {}
            }
            let side = if rng.below(2) == 0 {
                Side::Buy
            } else {
                Side::Sell
            };
            // Mostly behind the mid (resting), sometimes through it (trading).
            let offset = rng.below(8);
            let price = match side {
                Side::Buy => *mid + 2 - offset.min(*mid - 1),
                Side::Sell => *mid - 2 + offset,
            };
            let order = next_id;
            next_id += 1;
            if rng.below(10) != 0 {
                // Exponential lifetime with the given mean, at least one command.
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                let life = 1 + (-(1.0 - u).ln() * lifetime as f64) as u64;
                due.push(Reverse((now + life, order, instrument)));
            }
            Command::New {
                instrument,
                order,
                side,
                price,
                quantity: 1 + rng.below(100),
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
        let seen = self.seen.sorted();
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
    fn the_order_index_agrees_with_a_map_through_clusters_wraps_and_growth() {
        let mut rng = Rng(0x1D);
        let mut index = OrderIndex::default();
        let mut model: HashMap<u64, u32> = HashMap::new();
        // Ids whose home is slot 0 (one long cluster), ids whose home is the last slot at
        // every table size up to 8192 (runs that wrap into the first cluster), and
        // sequential ids (growth).
        let pool: Vec<u64> = (0..300u64)
            .map(|i| i << 32 | i)
            .chain((1..300u64).map(|k| k << 32 | (k ^ 0x1FFF)))
            .chain((0..3000).map(|i| (7 << 40) + i))
            .collect();
        for step in 0..60_000u32 {
            let id = pool[rng.below(pool.len() as u64) as usize];
            if rng.below(3) == 0 || !model.contains_key(&id) {
                if let std::collections::hash_map::Entry::Vacant(e) = model.entry(id) {
                    e.insert(step);
                    index.insert(id, step);
                }
            } else {
                assert_eq!(index.remove(id), model.remove(&id), "remove {id}");
            }
            if step % 97 == 0 {
                for &probe in pool.iter().step_by(7) {
                    assert_eq!(index.get(probe), model.get(&probe).copied(), "get {probe}");
                }
                assert_eq!(index.len, model.len());
            }
        }
        for (id, node) in model {
            assert_eq!(index.remove(id), Some(node));
        }
        assert_eq!(index.len, 0);
        assert!(index.slots.iter().all(|&(_, v)| v == NIL));
    }

    #[test]
    fn the_id_set_remembers_dense_and_scattered_ids() {
        let mut rng = Rng(0x5E7);
        let mut set = IdSet::default();
        let mut model = std::collections::BTreeSet::new();
        for i in 0..20_000u64 {
            let id = match i % 3 {
                0 => 1_000 + i,                // dense
                1 => rng.next_u64(),           // scattered
                _ => 1_000 + rng.below(i + 1), // repeats of dense ones
            };
            assert_eq!(set.insert(id), model.insert(id), "id {id}");
        }
        assert!(!set.insert(u64::MAX) || !set.insert(u64::MAX));
        model.insert(u64::MAX);
        assert!(!set.insert(0) || model.insert(0));
        assert_eq!(set.len, model.len());
        assert_eq!(set.sorted(), model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn market_flow_matches_the_reference_and_keeps_the_book_bounded() {
        let commands = market_commands(11, 20_000, 3, 1, 300);
        let (mut a, mut b) = (Exchange::new(3), ReferenceMatcher::new(3));
        let (mut ra, mut rb) = (Vec::new(), Vec::new());
        let (mut fills, mut cancels, mut peak) = (0, 0, 0);
        for c in &commands {
            a.apply(c, &mut ra);
            b.apply(c, &mut rb);
            assert_eq!(ra, rb, "after {c:?}");
            fills += ra
                .iter()
                .filter(|r| matches!(r, Report::Fill { .. }))
                .count();
            cancels += ra
                .iter()
                .filter(|r| matches!(r, Report::Cancelled { .. }))
                .count();
            peak = peak.max(a.resting_orders());
            ra.clear();
            rb.clear();
        }
        assert_eq!(a.book_hash(), b.book_hash());
        assert!(
            fills > 1_000 && cancels > 5_000,
            "fills {fills}, cancels {cancels}"
        );
        assert!(peak < 2_000, "the book stays near its lifetime: {peak}");
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
