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
def pick(items, rng=rng):
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

# Second batch (session 13): the kinds the evaluation set shows and the first batch has few of —
# shop-assistant chats, persuasion, support with or without an upsell — in a conversational register.
rng2 = random.Random(20261130)
RETAIL = ["home appliances", "smartphones and mobile plans", "bicycles", "running shoes and sportswear", "sofas and home furniture",
    "cosmetics and skin care", "eyewear", "pet food and supplies", "garden tools", "laptops", "kitchenware", "baby strollers",
    "package holidays", "hotel booking", "car rental", "restaurant table booking", "concert and theatre tickets",
    "flowers and gift delivery", "power tools", "board games and toys", "mattresses", "tea and coffee shop", "bookshop", "gym membership"]
KINDS2 = [
    ("retail_assistant", 40, "a shop assistant (phone, chat or in store) helping a customer choose a product or service; the customer often "
        "takes up one of the suggestions ('ok I'll take it', 'sounds good, I'll check it out', 'book it')"),
    ("persuasion", 18, "one person persuading another, in a casual chat, to donate to a charity, sign a petition or volunteer"),
    ("support_upsell", 18, "a support/service call or chat about a problem, where the agent then offers an upgrade or extra service"),
    ("support_only", 12, "a support/service call or chat about a problem only, no selling at all (negative control)"),
    ("b2c_inbound", 12, "a private customer calls or messages a company about a product or service they saw advertised"),
]
OUTCOMES2 = ["customer accepts a suggestion and buys or books it", "customer accepts a suggestion and says they will go and look at it",
    "customer asks to reserve / hold the item", "customer declines all suggestions politely", "customer says they will think about it",
    "customer is just browsing; no decision", "customer agrees to a call-back or a follow-up message", "conversation ends abruptly"]
STYLE2 = [("chat messages (typed, short lines, some typos, casual)", 35),
    ("spoken: punctuated but with fillers, interruptions and self-corrections", 30),
    ("ASR-noisy: all lower case, no punctuation, fillers (ээ, ну, как бы / uh, um, like), a few misheard words, false starts", 20),
    ("clean transcript: normal punctuation and capitals", 15)]
LENGTH2 = [((5, 10), 25), ((11, 24), 50), ((25, 45), 25)]
cards2 = {"w7": [], "w8": []}
for w in cards2:
    for lang in ("ru", "en"):
        for i in range(30):
            kind = pick([((k, d), wt) for k, wt, d in KINDS2], rng2)
            style = rng2.choices([s for s, _ in STYLE2], [wt for _, wt in STYLE2])[0]
            length = rng2.choices([l for l, _ in LENGTH2], [wt for _, wt in LENGTH2])[0]
            card = {"card": f"{w}-{lang}-{i+1:03d}", "language": lang, "kind": kind[0], "situation": kind[1],
                    "industry": rng2.choice(RETAIL if kind[0] != "persuasion" else ["children's charity", "animal shelter",
                        "environmental petition", "food bank volunteering", "blood donation", "local library fundraising"]),
                    "turns": "%d-%d" % length, "style": style}
            if kind[0] != "support_only":
                card.update(outcome=rng2.choice(OUTCOMES2), objections=rng2.choice(OBJ), manager=rng2.choice(SKILL))
            cards2[w].append(card)
    with open(f"cards_{w}.jsonl", "w") as f:
        for c in cards2[w]: f.write(json.dumps(c, ensure_ascii=False) + "\n")

# Third batch (session 18): sales-script paths, the turn type of the guideline's rule 12 that no earlier
# card asked for: a company's call script walked along one branch, the manager's lines as the script
# words them (placeholders kept), the client's lines the script's answer buttons or stage directions.
rng3 = random.Random(20261201)
KINDS3 = [
    ("gatekeeper", 35, "a company's outbound cold-call script that starts with the secretary/receptionist; one path through it "
        "(connected to the decision maker, or redirected to a supplier contact, or refused, or asked to send an e-mail)"),
    ("b2b_outbound_cold", 35, "a company's outbound cold-call script for the decision maker (ЛПР / DM) after getting through; one path "
        "through it (objections handled by the script's prepared answers)"),
    ("b2b_outbound_warm", 15, "a company's follow-up call script: the client got a KP/quote or left a request earlier; one path through it"),
    ("b2b_inbound", 15, "a company's script for answering inbound calls from a price list or an ad; one path through it"),
]
STYLE3 = ("sales-script path: the manager's turns are the script's lines as written (formal, may keep placeholders in brackets "
          "such as '(называем имя ЛПР)' / '(name of the decision maker)' or '(product)'); the client's turns are the script's "
          "answer-button labels, short (1-6 words: 'Соединяю', 'Нет, не интересно', 'Есть поставщик', 'Пришлите на почту' / "
          "'Not interested', 'We have a supplier', 'Send it by e-mail'), sometimes a stage direction in the third person "
          "('называет e-mail', 'ЛПР уточняет цену', 'gives the DM's name')")
LENGTH3 = [((5, 10), 40), ((11, 24), 50), ((25, 40), 10)]
cards3 = {"w9": [], "w10": []}
for w in cards3:
    for lang, n_lang in (("ru", 30), ("en", 10)):
        for i in range(n_lang):
            kind = pick([((k, d), wt) for k, wt, d in KINDS3], rng3)
            length = rng3.choices([l for l, _ in LENGTH3], [wt for _, wt in LENGTH3])[0]
            card = {"card": f"{w}-{lang}-{i+1:03d}", "language": lang, "kind": kind[0], "situation": kind[1],
                    "industry": rng3.choice(INDUSTRIES), "turns": "%d-%d" % length, "style": STYLE3,
                    "outcome": rng3.choice(OUTCOMES), "objections": rng3.choice(OBJ), "manager": rng3.choice(SKILL)}
            cards3[w].append(card)
    with open(f"cards_{w}.jsonl", "w") as f:
        for c in cards3[w]: f.write(json.dumps(c, ensure_ascii=False) + "\n")
