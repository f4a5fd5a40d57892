"""Russian and English for the web pages: steps, flags, objection kinds in people's words, and the
pages' own text. English is the key (gettext style): ``t("Review queue")`` is "Очередь проверки" in
Russian and itself in English; a text missing here is shown in English.
"""
from __future__ import annotations

from typing import Optional

LANGUAGES = ("en", "ru")

STEP_LABELS = {
    "en": {"greeting": "Greeting", "needs_discovery": "Needs discovery", "presentation": "Presentation",
           "objection_handling": "Objection handling", "closing": "Closing"},
    "ru": {"greeting": "Знакомство", "needs_discovery": "Выявление потребностей", "presentation": "Презентация",
           "objection_handling": "Работа с возражениями", "closing": "Завершение сделки"},
}
STEP_SHORT = {
    "en": {"greeting": "Greet", "needs_discovery": "Needs", "presentation": "Pres", "objection_handling": "Object",
           "closing": "Close"},
    "ru": {"greeting": "Знак.", "needs_discovery": "Потр.", "presentation": "През.", "objection_handling": "Возр.",
           "closing": "Закр."},
}
FLAG_LABELS = {
    "en": {"unanswered_objection": "Objection not answered", "no_needs_discovery": "No needs discovery",
           "no_closing_attempt": "No attempt to close", "long_monologue": "Long monologue",
           "high_talk_ratio": "Manager talks too much", "presentation_before_needs": "Presented before asking",
           "vague_next_step": "Vague next step"},
    "ru": {"unanswered_objection": "Возражение без ответа", "no_needs_discovery": "Нет выявления потребностей",
           "no_closing_attempt": "Нет попытки закрыть сделку", "long_monologue": "Длинный монолог",
           "high_talk_ratio": "Менеджер говорит слишком много",
           "presentation_before_needs": "Презентация до выявления потребностей",
           "vague_next_step": "Размытый следующий шаг"},
}
OBJECTION_LABELS = {
    "en": {"price": "Price", "supplier": "Has a supplier", "think": "“I'll think about it”", "timing": "Timing",
           "trust": "Trust", "no_need": "No need", "send_info": "“Send me the info”", "other": "Other"},
    "ru": {"price": "Цена", "supplier": "Есть поставщик", "think": "«Я подумаю»", "timing": "Не время",
           "trust": "Недоверие", "no_need": "Нет потребности", "send_info": "«Пришлите информацию»",
           "other": "Другое"},
}
WORDS = {"ru": {
    "good": "хорошо", "weak": "слабо", "missing": "нет", "manager": "менеджер", "client": "клиент",
    "unknown": "неизвестно", "agree": "согласен", "disagree": "не согласен", "tagged": "обработан",
    "failed": "ошибка",
}}

TEXT = {"ru": {
    "Funnel": "Воронка", "Leads to deals": "От лидов к сделкам", "Leads": "Лиды", "Hot": "Горячие",
    "Hot called within %g min": "Горячим позвонили за %g мин", "Median delay": "Медиана задержки",
    "Missed": "Пропущено", "Calls per lead": "Звонков на лид", "Proposals per lead": "КП на лид",
    "Won / lost / open": "Выиграно / проиграно / в работе", "Conversion": "Конверсия", "Revenue": "Выручка",
    "Teams": "Команды", "manager": "менеджер", "Hot leads called in time": "Горячие лиды: звонок вовремя",
    "Lead to deal conversion": "Конверсия лида в сделку", "Conversion by step done well": "Конверсия: этап сделан хорошо",
    "done well": "хорошо", "not well": "не хорошо", "Which weak step costs deals": "Какой слабый этап стоит сделок",
    "Done well: won": "Хорошо: выиграно", "Not well: won": "Не хорошо: выиграно",
    "Difference (90% interval)": "Разница (90% интервал)", "Deals lost": "Потеряно сделок", "Verdict": "Вывод",
    "Per manager": "По менеджерам", "closed leads": "закрытых лидов",
    "No CRM leads stored yet. Point your CRM webhooks at callqa ingest (README: CRM).":
        "Лидов из CRM пока нет. Направьте вебхуки CRM на callqa ingest (README: CRM).",
    "Closed leads (won or lost) with at least one recorded call; a step counts as done well when any of the lead’s calls did it well. Correlation, not proof: listen to the calls.":
        "Закрытые лиды (выиграны или проиграны) хотя бы с одним записанным звонком; этап сделан хорошо, если он сделан хорошо хотя бы в одном звонке по лиду. Это связь, а не доказательство: слушайте звонки.",
    "Managers": "Менеджеры", "Review queue": "Очередь проверки", "Coaching": "Коучинг", "Rules": "Правила",
    "API": "API", "Log out": "Выйти", "Log in": "Войти", "User name": "Имя пользователя", "Password": "Пароль",
    "Wrong user name or password.": "Неверное имя пользователя или пароль.",
    "Weak stage per manager": "Слабый этап по менеджерам", "Manager": "Менеджер", "Team": "Команда",
    "Calls": "Звонки", "Weak stage": "Слабый этап", "From": "С", "To": "По", "Show": "Показать",
    "all": "все", "Step": "Этап", "Occurred": "Был", "Quality ok": "Качество", "Next step": "Следующий этап",
    "Score": "Оценка", "vs team": "к команде", "Objections": "Возражения", "Activity": "Активность",
    "Flagged calls": "Звонки с замечаниями", "Flags": "Замечания", "Transcript": "Расшифровка",
    "Agree": "Согласен", "Disagree": "Не согласен", "comment": "комментарий", "answered": "отработано",
    "not answered": "не отработано", "furthest": "дальний этап", "Started": "Начало", "Call": "Звонок",
    "Flag": "Замечание", "At": "Время", "Why": "Почему", "Verdict": "Вердикт", "Nothing to review.":
    "Проверять нечего.", "Show reviewed calls too": "Показать и проверенные", "Only calls to review":
    "Только непроверенные", "Flag rules": "Правила замечаний", "Fired": "Сработало", "Reviewed": "Проверено",
    "Disagree %": "Не согласны, %", "Objection-handling coaching": "Коучинг по работе с возражениями",
    "Download as CSV": "Скачать CSV", "Answered": "Отработано", "Shortfall": "Отставание",
    "Missed most": "Чаще всего пропущено", "moments to coach on": "моменты для разбора",
    "No objections recorded yet.": "Возражений пока нет.", "Tagging rules": "Правила разметки",
    "Not found": "Не найдено", "Cannot do that": "Нельзя", "Error": "Ошибка", "to review": "проверить",
    "Steps against the team": "Этапы в сравнении с командой", "Weekly trend": "Динамика по неделям",
    "Step funnel of the team": "Воронка этапов команды", "Language": "Язык", "no team": "без команды",
    "Uncertain steps": "Неуверенные этапы",
    "steps found on these calls rest only on turns the learned tagger was unsure of and are left out of the statistics":
        "этапов в этих звонках держатся только на репликах, в которых модель не уверена, и не входят в статистику",
    "uncertain turns": "неуверенных реплик",
    "uncertain, not counted": "неуверенно, не в статистике",
    "A trainer can correct them on the call page.": "Тренер может исправить их на странице звонка.",
    "corrected by": "исправил", "Correct": "Исправить", "no step": "без этапа", "Step": "Этап",
    "Objection kind": "Тип возражения", "mark answered": "отметить: отработано",
    "mark not answered": "отметить: не отработано", "Channels": "Каналы", "one party per channel": "по собеседнику на канал",
    "the same audio on both channels (read once, as mono)": "одна и та же запись в обоих каналах (прочитана один раз, как моно)",
    "one channel silent (the other read as mono)": "один канал пуст (другой прочитан как моно)", "mono": "моно",
    "envelope correlation": "корреляция огибающих", "Speakers": "Говорящие",
    "voice(s) told apart; manager found with confidence": "голос(а) различено; менеджер определён с уверенностью",
    "uncertain: talk ratio, questions and monologues left out": "неуверенно: доля речи, вопросы и монологи не учитываются",
    "by channel": "по каналам", "unknown": "неизвестно",
    "Recording": "Запись", "points below the team over": "пунктов ниже команды на", "model": "модель",
    "uncertain": "неуверенно", "this manager": "менеджер", "team": "команда", "Account": "Учётная запись",
    "reviewed by": "проверил", "API tokens": "Токены API", "Save": "Сохранить", "Time zone": "Часовой пояс",
    "why": "почему", "calls": "звонков", "none: at or above the team": "нет: на уровне команды или выше",
    "not enough calls": "мало звонков",
    "Digest": "Сводка", "Since": "С", "Period": "Период", "Calls and leads per manager": "Звонки и лиды по менеджерам",
    "Failed": "Ошибки", "Hot missed": "Горячих пропущено", "No calls and no CRM leads in this period.":
    "За этот период нет ни звонков, ни лидов из CRM.", "Hot leads not called within %g min":
    "Горячие лиды без звонка за %g мин", "Lead": "Лид", "Created": "Создан", "First call": "Первый звонок",
    "not called": "не позвонили", "after %g min": "через %g мин",
    "None: every hot lead was called in time.": "Нет: всем горячим лидам позвонили вовремя.",
    "Flagged calls waiting for review": "Звонки с замечаниями ждут проверки",
    "%d flags on %d calls of this period, %d in the whole review queue.":
        "%d замечаний в %d звонках за период, %d во всей очереди проверки.",
    "The biggest gap": "Самый большой разрыв", "Weakest step": "Самый слабый этап", "Biggest drop": "Самый большой отсев",
    "lost": "потеряно", "Too few tagged calls to name one.": "Слишком мало размеченных звонков, чтобы назвать его.",
}}


def pick_language(user_language: Optional[str], accept_language: Optional[str]) -> str:
    """The user's language if set, else the first of ru/en the browser asks for, else English."""
    if user_language in LANGUAGES:
        return user_language
    best, best_q = "en", -1.0
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        lang = tag.strip().lower().split("-")[0]
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if lang in LANGUAGES and q - i * 1e-6 > best_q:
            best, best_q = lang, q - i * 1e-6
    return best


class Labels:
    """The words of one language, for templates: t(text), step(code), flag(code), kind(code)."""

    def __init__(self, lang: str):
        self.lang = lang if lang in LANGUAGES else "en"

    def t(self, text: str) -> str:
        return TEXT.get(self.lang, {}).get(text, text)

    def step(self, code: Optional[str]) -> str:
        return "–" if not code else STEP_LABELS[self.lang].get(code, code)

    def short(self, code: str) -> str:
        return STEP_SHORT[self.lang].get(code, code)

    def flag(self, code: str) -> str:
        return FLAG_LABELS[self.lang].get(code, code)

    def kind(self, code: str) -> str:
        return OBJECTION_LABELS[self.lang].get(code, code)

    def word(self, code: Optional[str]) -> str:
        return "–" if code is None else WORDS.get(self.lang, {}).get(code, code)
