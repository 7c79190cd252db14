"""The UCI Online Retail dataset as a tandem world: real shoppers, purchases only.

Cleaning, in this order (figures for the vendored file):
- cancellations (invoice `C…`) and bad-debt adjustments (`A…`) are dropped: a cancellation
  names what was returned, not what a shopper chose; quantity ≤ 0 and unit price ≤ 0 lines
  (stock corrections, free samples) likewise;
- non-product codes are dropped: a product's StockCode is five digits plus an optional
  letter suffix (`85123A`); POST, DOT, M, BANK CHARGES, AMAZONFEE, gift vouchers and the
  DCGS… marketplace codes are postage, fees and manual entries; codes are upper-cased
  (`85123a` is `85123A`);
- guest checkouts (no CustomerID, 25 % of lines) are dropped: there is no shopper to learn
  from or to recommend to; they would only add to item popularity;
- exact duplicate lines (5,268) are dropped, then every (customer, invoice, product) becomes
  one purchase event at the invoice time, quantity summed: the invoice is the basket.

Items are the products sold at least once before the cutoff (what a shop knows on that day);
a test purchase of a product launched later stays a target that no method can hit.
Price: the median unit price of the product's lines before the cutoff (guest lines included).
Stock: the data has none, so every item is in stock.
Category: the data has only free-text names, so a category comes from keywords: the name's
words are read from the last (the head noun: "WHITE HANGING HEART T-LIGHT HOLDER" reads
HOLDER, T-LIGHT, …) and the first one listed in `CATEGORY_KEYWORDS` names the category;
names with none of them are "other" (about 14 % of products).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .world import PURCHASE, Events

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "datasets" / "online-retail" / "online_retail.parquet"
DAY_MS = 86_400_000

CATEGORY_KEYWORDS = {
    "christmas": "CHRISTMAS XMAS ADVENT SANTA REINDEER SNOWFLAKE SNOWMAN NATIVITY BAUBLE BAUBLES TREE "
                 "STOCKING",
    "jewellery": "NECKLACE BRACELET EARRINGS RING CHARM DIAMANTE BROOCH HAIRCLIP HAIRCLIPS BEAD BEADS "
                 "JEWELLERY PENDANT LARIAT",
    "bags": "BAG BAGS PURSE TOTE SHOPPER BACKPACK RUCKSACK LUNCHBAG HANDBAG WALLET",
    "candles & lights": "CANDLE CANDLES T-LIGHT T-LIGHTS TLIGHT LIGHT LIGHTS LANTERN LAMP LAMPSHADE "
                        "NIGHTLIGHT INCENSE CANDLESTICK CHANDELIER",
    "kitchen & dining": "MUG MUGS CUP CUPS BOWL BOWLS PLATE PLATES JAR JARS TIN TINS TRAY TRAYS CUTLERY TEA "
                        "TEAPOT COFFEE CAKESTAND CAKE BAKING SPOON SPOONS NAPKINS NAPKIN APRON TEATOWEL "
                        "TOWEL TOWELS JUG GLASS BEAKER DISH DISHES LUNCH BOX BOXES COASTER COASTERS PANTRY "
                        "BOTTLE CHOPSTICKS KITCHEN EGG PLACEMAT PLACEMATS STRAWS CASES MOULD PAN TOASTRACK "
                        "FLASK BIN CONTAINER",
    "stationery & crafts": "CARD CARDS NOTEBOOK NOTEBOOKS PEN PENS PENCIL PENCILS STICKER STICKERS WRAP "
                           "PAPER ENVELOPE ENVELOPES TAPE NOTEPAD JOURNAL ERASER RUBBER STATIONERY BOOK "
                           "CALENDAR DIARY LABELS TAG TAGS CRAYONS CHALK RIBBON RIBBONS PATCHES FELTCRAFT "
                           "SKETCHBOOK ALBUM BOARD BLACKBOARD RULER",
    "home decor": "SIGN SIGNS FRAME FRAMES CLOCK MIRROR CUSHION COVER DOORMAT HOOK HOOKS DOORSTOP "
                  "DECORATION VASE ORNAMENT WREATH GARLAND PLAQUE HANGER HANGERS DRAWER KNOB KNOBS "
                  "CABINET SHELF STAND BASKET BLANKET THROW CHALKBOARD WALL MAGNET MAGNETS BUNTING HEART "
                  "HEARTS BELL BELLS FLOWER FLOWERS ROSE ROSES FEATHER STAR CURTAIN CHAIR STOOL RACK MAT",
    "garden & outdoor": "GARDEN PARASOL UMBRELLA WATERING PLANT PLANTER POT POTS BIRD BIRDHOUSE FEEDER "
                        "SEED SEEDS THERMOMETER PICNIC WINDMILL",
    "toys & games": "TOY TOYS GAME GAMES JIGSAW PUZZLE DOLL DOLLS TEDDY BALL BALLS SKIPPING SOLDIER "
                    "SOLDIERS SPINNING DOMINOES PLAYING BLOCK BLOCKS KIT CRAYON PAINT COLOURING BUBBLES",
    "party & gifts": "PARTY BALLOON BALLOONS GIFT CONFETTI INVITES CRACKER CRACKERS",
    "textiles & accessories": "SCARF GLOVES HAT HATS SOCKS SLIPPERS TISSUE TISSUES HANDKERCHIEF PONCHO "
                              "RAINCOAT MITTENS WARMER",
    "bathroom": "SOAP SOAPS BATHROOM WASHBAG TOILET SPONGE DISPENSER",
    "storage": "STORAGE CRATE TRUNK HAMPER CASE",
}
_KEYWORD_CATEGORY = {w: c for c, words in CATEGORY_KEYWORDS.items() for w in reversed(words.split())}
CATEGORIES = sorted(CATEGORY_KEYWORDS) + ["other"]
_PRODUCT_CODE = re.compile(r"\d{5}[A-Z]{0,2}")


def category_of(name: str | None) -> str:
    """The category of a product name: its last word that is a keyword, read backwards."""
    for word in reversed(re.findall(r"[A-Z][A-Z'-]*", (name or "").upper())):
        if word in _KEYWORD_CATEGORY:
            return _KEYWORD_CATEGORY[word]
    return "other"


@dataclass
class RetailWorld:
    item_id: np.ndarray  # object: StockCode
    name: np.ndarray  # object: the product's most frequent description
    category: np.ndarray  # int32 index into CATEGORIES
    price: np.ndarray  # float32 GBP
    in_stock: np.ndarray  # bool
    user_id: np.ndarray  # object: CustomerID
    events: Events  # purchases, time order; user/item index the arrays above
    quantity: np.ndarray  # int32 per event: units in that basket line
    invoice: np.ndarray  # object per event
    cutoff_ms: int
    stats: dict


def parse_cutoff(text: str) -> int:
    try:
        return int(np.datetime64(text, "ms").astype(np.int64))
    except ValueError as e:
        raise SystemExit(f"--cutoff {text!r}: expected YYYY-MM-DD ({e})") from e


def load(cutoff_ms: int, path: Path = DEFAULT_PATH) -> RetailWorld:
    table = pq.read_table(path)
    stats = {"rows": table.num_rows}
    code = pc.utf8_upper(table.column("stock_code"))
    invoice = table.column("invoice")
    keep = pc.and_(
        pc.and_(pc.invert(pc.starts_with(invoice, "C")), pc.invert(pc.starts_with(invoice, "A"))),
        pc.and_(pc.greater(table.column("quantity"), 0), pc.greater(table.column("unit_price"), 0)))
    keep = pc.and_(keep, pc.match_substring_regex(code, r"^\d{5}[A-Z]{0,2}$"))
    table = table.set_column(table.column_names.index("stock_code"), "stock_code", code).filter(keep)
    stats["product_lines"] = table.num_rows
    ts = table.column("invoice_ts").cast(pa.int64()).to_numpy()
    codes = np.asarray(table.column("stock_code").to_pylist(), dtype=object)
    prices = table.column("unit_price").to_numpy()
    names = table.column("description").to_pylist()

    # The catalog as of the cutoff: products sold before it, by anyone (guests included).
    before = ts < cutoff_ms
    item_id = np.array(sorted(set(codes[before])), dtype=object)
    if item_id.size == 0:
        raise SystemExit(f"no product was sold before the cutoff {np.datetime64(cutoff_ms, 'ms')}")
    index = {c: i for i, c in enumerate(item_id)}
    row_item = np.array([index.get(c, -1) for c in codes], dtype=np.int64)
    price = np.ones(item_id.size, np.float32)
    name_counts: list[Counter] = [Counter() for _ in item_id]
    sel = np.flatnonzero(before)
    order = sel[np.argsort(row_item[sel], kind="stable")]
    bounds = np.searchsorted(row_item[order], np.arange(item_id.size + 1))
    for i in range(item_id.size):
        rows = order[bounds[i]:bounds[i + 1]]
        price[i] = float(np.median(prices[rows]))
        name_counts[i].update(n.strip() for n in (names[r] for r in rows) if n)
    name = np.array([c.most_common(1)[0][0] if c else "" for c in name_counts], dtype=object)
    category = np.array([CATEGORIES.index(category_of(n)) for n in name], dtype=np.int32)

    # Shoppers' purchases: duplicates out, one event per (customer, invoice, product).
    customer = table.column("customer_id")
    shoppers = pc.is_valid(customer).to_numpy(zero_copy_only=False)
    stats["shopper_lines"] = int(shoppers.sum())
    lines = pa.table({
        "customer": customer, "invoice": table.column("invoice"),
        "item": pa.array(row_item), "ts": pa.array(ts), "quantity": table.column("quantity"),
        "price": table.column("unit_price"),
    }).filter(pa.array(shoppers))
    distinct = lines.group_by(["customer", "invoice", "item", "ts", "quantity", "price"]).aggregate([])
    stats["duplicate_lines"] = lines.num_rows - distinct.num_rows
    baskets = distinct.group_by(["customer", "invoice", "item", "ts"]).aggregate([("quantity", "sum")])
    cust = np.asarray(baskets.column("customer").to_pylist(), dtype=object)
    user_id, user = np.unique(cust, return_inverse=True)
    item = baskets.column("item").to_numpy()
    ev_ts = baskets.column("ts").to_numpy()
    qty = baskets.column("quantity_sum").to_numpy().astype(np.int32)
    inv = np.asarray(baskets.column("invoice").to_pylist(), dtype=object)
    # Products launched after the cutoff exist only in the test window; they keep index -1
    # there (a target nobody can recommend) and cannot occur before it.
    order = np.lexsort((item, user, ev_ts))
    events = Events(user[order].astype(np.int64), item[order].astype(np.int64),
                    np.full(order.size, PURCHASE, np.int8), ev_ts[order].astype(np.int64))
    stats.update({"events": int(order.size), "customers": int(user_id.size), "items": int(item_id.size),
                  "events_on_later_products": int((item < 0).sum())})
    return RetailWorld(item_id, name, category, price, np.ones(item_id.size, bool), user_id.astype(object),
                       events, qty[order], inv[order], cutoff_ms, stats)
