"""Knowledge bases the retrieval tests use: the cases issue 10 reproduced, in documents of our own; and made-up
text."""

from __future__ import annotations

import random
import string

LIGHTHOUSE = [
    {
        "id": "lighthouse",
        "title": "Westkapelle lighthouse",
        "content": "The Westkapelle lighthouse is open for climbing from April to October, daily from 10:00 to "
        "17:00. The climb has 184 steps and takes about fifteen minutes.",
    },
    {
        "id": "cafe",
        "title": "Beach café",
        "content": "The beach café by the dyke serves coffee, waffles and soup from 9:00 to 18:00 in summer.",
    },
]

HOTEL = [
    {"id": "reception", "title": "Reception", "content": "Our 24-hour reception means late check-in is possible "
     "at any time of night. The reception's phone number is +31 20 555 0134."},
    {"id": "payment", "title": "Payment", "content": "We accept Visa, Mastercard, Apple Pay and Google Pay. "
     "Cheques are not accepted."},
    {"id": "double", "title": "Double room", "content": "A double room costs €149 per night, or €179 per night "
     "with breakfast for two."},
    {"id": "suite", "title": "Suite", "content": "The suite costs €289 per night, or €319 per night with "
     "breakfast for two."},
    {"id": "breakfast", "title": "Breakfast", "content": "Breakfast is served from 7:00 to 10:30 in the restaurant "
     "on the ground floor."},
    {"id": "bikes", "title": "Bike rental", "content": "Rental bikes have hand brakes: check the brakes before you "
     "ride. A bike costs €12 per day."},
    {"id": "zh-payment", "title": "支付方式", "content": "我们接受银联卡、支付宝和微信支付。"},
]  # fmt: skip

_SECTIONS = {
    "Booking": "A booking is confirmed when the guest receives a confirmation number by e-mail. Bookings for more "
    "than nine rooms are group bookings and follow the group conditions.",
    "Deposits": "For stays of more than three nights the hotel may ask for a deposit of thirty percent of the "
    "total price, payable within seven days of the booking.",
    "Cancellation": "A booking can be cancelled free of charge until 18:00 on the day before arrival. Later "
    "cancellations and no-shows are charged the price of the first night.",
    "Payment": "The remaining amount is paid on arrival. Invoices for companies are sent within fourteen days.",
    "Liability": "The hotel is not liable for the loss of valuables that were not kept in the room safe or the "
    "safe at reception, except in the case of gross negligence by its staff.",
    "Damages": "Guests are liable for damage they cause to the room or its contents; the hotel charges the cost of "
    "repair or replacement at the price of the day.",
    "Minors": "Guests under eighteen may only stay when accompanied by an adult who is responsible for them.",
    "Pets": "Dogs up to 20 kg are welcome for €15 per night; they may not be left alone in the room and are not "
    "allowed in the restaurant.",
    "Force majeure": "Neither party is liable for failing to perform its obligations because of events beyond its "
    "control, such as floods, strikes or government orders.",
    "Complaints": "Complaints are made to reception during the stay, or in writing within thirty days after it.",
    "Data protection": "Personal data is processed only to handle the booking and the stay, and kept for seven "
    "years as the tax law requires.",
}


def terms_and_conditions() -> dict:
    """A 13,000-character document of numbered sections whose answers sit deep inside."""
    filler = (
        " These terms apply to every stay at the hotel and to every service the hotel provides, whether booked "
        "directly, by telephone or through a travel agency, unless other terms were agreed in writing."
    )
    sections = [
        f"## {n}. {title}\n\n{text}{filler * 3}\n\n{text.split('.')[0]} applies without exception.{filler}"
        for n, (title, text) in enumerate(_SECTIONS.items(), 1)
    ]
    return {"id": "terms", "title": "General terms and conditions", "content": "\n\n".join(sections)}


def gibberish(chars: int, seed: int = 1) -> str:
    """Distinct made-up words: the costliest text to tokenise, score and embed (the fuzz campaign's long queries)."""
    rng = random.Random(seed)
    words, size = [], 0
    while size < chars:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:chars]
