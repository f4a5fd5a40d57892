"""Scenario cards for the tagger training corpus: random combinations, seeded, split among writers."""
import json, random
rng = random.Random(20261129)
INDUSTRIES = ["corrugated packaging", "freight logistics", "CRM software (SaaS)", "office furniture", "industrial compressors",
    "commercial printing", "construction materials (dry mixes)", "recruiting services", "online advertising agency",
    "business property insurance", "commercial cleaning", "food wholesale for cafes", "auto parts for fleets",
    "business internet and telephony", "accounting outsourcing", "coworking and office rent", "dental equipment",
    "video surveillance and security", "corporate English training", "solar panels for farms", "fertilizers",
    "translation services", "event catering", "workwear and uniforms", "water coolers and bottled water",
    "warehouse racking", "IT outsourcing / helpdesk", "fleet GPS tracking", "LED lighting retrofit", "promo merchandise"]
KINDS = [  # (kind, weight, description)
    ("b2b_outbound_cold", 34, "outbound cold call by a sales manager to a company that has not heard of the seller"),
    ("b2b_outbound_warm", 14, "outbound follow-up: the client left a request on the website, or got a KP/quote earlier"),
    ("b2b_inbound", 14, "inbound: the client calls the seller after seeing an ad or a price list"),
    ("gatekeeper", 10, "outbound cold call that first meets a secretary/receptionist; may or may not reach the decision maker"),
    ("retail_assistant", 6, "a shop assistant helping a customer choose a product (phone or chat)"),
    ("persuasion", 3, "one person persuading another to donate to a charity or sign up for a cause (chat)"),
    ("support_upsell", 6, "a support/service call about a problem, where the agent then offers an upgrade or extra service"),
    ("support_only", 5, "a support/service call about a problem only, no selling at all (negative control)"),
    ("no_conversation", 5, "wrong number, voicemail greeting + message, an IVR menu, or a call that drops after hello (negative control)"),
    ("b2b_meeting_followup", 3, "a call with an existing client about a repeat order or contract renewal"),
]
OUTCOMES = ["meeting scheduled with date/time", "KP/quote sent by e-mail with a follow-up call agreed for a specific day",
    "order or invoice agreed", "client refuses after objections; manager gives up", "client says 'I'll think about it', manager leaves it vague",
    "call-back agreed at a concrete time", "call drops or ends abruptly mid-conversation", "client asks to send info by e-mail",
    "trial / pilot / sample agreed", "client is not the decision maker; manager gets the DM's name/contact", "no next step at all, friendly goodbye"]
OBJ = ["price / too expensive", "already have a supplier / all good", "timing (after holidays, next quarter, busy now)",
    "I'll think about it / need to discuss", "trust / legitimacy / never heard of you", "fit / compatibility doubt",
    "flat refusal / not interested", "no budget", "none: the client raises no objection", "none", "two different objections"]
SKILL = ["strong manager (asks needs before presenting, answers objections, proposes a concrete next step)",
    "average manager", "weak manager (presents before asking anything, ignores or fumbles objections, no concrete next step)"]
STYLE = [("clean transcript: normal punctuation and capitals", 45),
    ("ASR-noisy: all lower case, no punctuation, fillers (ээ, ну, как бы / uh, um, like), a few misheard words, false starts", 35),
    ("chat messages (typed, short lines, some typos)", 8),
    ("mixed: punctuated but with fillers and self-corrections as spoken", 12)]
LENGTH = [((5, 10), 25), ((11, 24), 45), ((25, 45), 22), ((46, 80), 8)]
def pick(items):
    tot = sum(w for _, w in items); r = rng.uniform(0, tot)
    for it, w in items:
        r -= w
        if r <= 0: return it
    return items[-1][0]
WRITERS = ["w1", "w2", "w3", "w4", "w5", "w6"]
cards = {w: [] for w in WRITERS}
n = 0
for w in WRITERS:
    for lang in ("ru", "en"):
        for i in range(50):
            n += 1
            kind = pick([((k, d), wt) for k, wt, d in KINDS])
            card = {"card": f"{w}-{lang}-{i+1:03d}", "language": lang, "kind": kind[0], "situation": kind[1],
                    "industry": rng.choice(INDUSTRIES), "turns": "%d-%d" % pick(LENGTH), "style": pick(STYLE)}
            if kind[0] not in ("support_only", "no_conversation"):
                card.update(outcome=rng.choice(OUTCOMES), objections=rng.choice(OBJ), manager=rng.choice(SKILL))
            cards[w].append(card)
for w, cs in cards.items():
    with open(f"cards_{w}.jsonl", "w") as f:
        for c in cs: f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(n)
