"""From a CallRecorded and its per-channel ASR results to a CallTranscribed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from models.events import AsrInfo, CallRecorded, CallTranscribed, Roles, Segment, Word
from pipeline.asr import AsrOptions, ChannelResult, options_from_settings
from pipeline.audio import AudioInfo, NoSpeechError  # noqa: F401  (NoSpeechError is re-exported here)
from pipeline.channels import ChannelAnalysis


@dataclass(frozen=True)
class ChannelJob:
    channel: Optional[int]  # None: the file is mono, transcribe it once
    speaker: str
    diarize: bool = False   # one mixed stream: tell the voices apart and find the manager


def plan_channels(ev: CallRecorded, info: AudioInfo, analysis: Optional[ChannelAnalysis] = None,
                  diarize: bool = True) -> list[ChannelJob]:
    """Which channels to transcribe and who speaks on each.

    Two channels that carry one party each (the event's ``channels`` says which is the manager's) are
    transcribed apart. Two channels that carry the same call (``analysis``: duplicate), or a call on one
    channel and silence on the other, are one mixed stream, whatever the event says: transcribing them as
    two parties would say every sentence twice. A mixed stream is diarized unless ``diarize`` is off."""
    if info.channels >= 2 and ev.channels.layout == "stereo":
        if analysis is None or analysis.detected == "stereo":
            mc = ev.channels.manager_channel
            if mc is None:
                return [ChannelJob(0, "unknown"), ChannelJob(1, "unknown")]
            return [ChannelJob(0, "manager" if mc == 0 else "client"),
                    ChannelJob(1, "manager" if mc == 1 else "client")]
        channel = analysis.active_channel if analysis.detected == "one_channel" else 0
        return [ChannelJob(channel or 0, "unknown", diarize)]
    return [ChannelJob(None, "unknown", diarize)]


def diarize_options(ev: CallRecorded, settings) -> dict:
    """The keyword arguments of pipeline.diarize.attribute for this call (they travel to the pool)."""
    return {"direction": ev.direction, "min_confidence": settings.role_min_confidence}


def merge(ev: CallRecorded, jobs: list[ChannelJob], results: list[ChannelResult], opts: AsrOptions,
          wall_s: float, analysis: Optional[ChannelAnalysis] = None) -> CallTranscribed:
    segments: list[Segment] = []
    roles = None
    for job, res in zip(jobs, results):
        speakers = res.speakers or [job.speaker] * len(res.turns)
        voices = res.voices or [None] * len(res.turns)
        for t, speaker, voice in zip(res.turns, speakers, voices):
            segments.append(Segment(
                speaker=speaker, voice=voice, start=t.start, end=t.end, text=t.text,
                avg_logprob=round(t.avg_logprob, 4),
                words=[Word(start=w.start, end=w.end, word=w.word, probability=round(w.probability, 3))
                       for w in t.words]))
        if res.roles:
            roles = Roles.model_validate(res.roles)
    if roles is None:
        known = all(j.speaker != "unknown" for j in jobs)
        roles = Roles(method="channels" if known else "none", voices=len(jobs) if known else 0,
                      reason=None if known else ("no channel is marked as the manager's" if len(jobs) > 1
                                                 else "diarization is off (CALLQA_DIARIZE)"))
    segments.sort(key=lambda s: (s.start, s.end))
    audio_s = max((r.audio_s for r in results), default=0.0)
    langs = [r.language for r in results if r.language]
    detected = ev.language if ev.language != "auto" else (max(set(langs), key=langs.count) if langs else None)
    data = ev.model_dump()
    if analysis is not None:
        data["channels"] = {**data["channels"], **analysis.as_dict()}
        data["channels"].pop("active_channel", None)
    data.update(
        duration_s=ev.duration_s or round(audio_s, 3),
        language_detected=detected,
        segments=segments,
        roles=roles,
        asr=AsrInfo(engine=opts.engine, model=opts.model, compute_type=opts.compute_type,
                    audio_s=round(audio_s, 3), wall_s=round(wall_s, 3)),
    )
    return CallTranscribed.model_validate(data)


class CallTranscriber:
    """Fetches a call and transcribes its channels in a process pool, off the event loop.

    One Whisper model per worker process, loaded on first use and kept. On the CPU the channels of one call
    run in parallel as one job each (each channel's chunks batched on their own), so one call uses the
    pool's one-thread processes side by side. On a GPU (``CALLQA_ASR_DEVICE=cuda``) one job takes the whole
    call, so both channels' chunks fill the same batches on the one device.
    """

    def __init__(self, settings):
        self.settings = settings
        self.opts = options_from_settings(settings)
        self._pool = None

    @property
    def pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: forking a process that runs an event loop and Kafka clients is unsafe
            self._pool = ProcessPoolExecutor(max_workers=self.settings.asr_workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def __call__(self, ev: CallRecorded) -> CallTranscribed:
        import asyncio
        import time

        from pipeline.asr import transcribe_call, transcribe_channel
        from pipeline.audio import TooLongError, probe
        from pipeline.fetch import fetch

        s = self.settings
        path = await asyncio.to_thread(fetch, ev.recording_url, s.allowed_dirs, s.home_dir / "cache" / "recordings",
                                       max_bytes=s.fetch_max_bytes, timeout_s=s.fetch_timeout_s)
        info = await asyncio.to_thread(probe, path)
        if info.duration_s > s.asr_max_audio_s:
            raise TooLongError(f"recording lasts {info.duration_s:.0f}s, over the {s.asr_max_audio_s:.0f}s limit "
                               "(CALLQA_ASR_MAX_AUDIO_S)")
        from pipeline.channels import analyse_file

        analysis = ChannelAnalysis("mono") if info.channels < 2 else None
        if info.channels >= 2 and ev.channels.layout == "stereo":
            analysis = await asyncio.to_thread(analyse_file, path, s.asr_max_audio_s)
        jobs = plan_channels(ev, info, analysis, s.diarize)
        language = ev.language if ev.language != "auto" else None
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        if self.opts.device == "cpu" or len(jobs) == 1:
            futures = [loop.run_in_executor(self.pool, transcribe_channel, str(path), j.channel, language, self.opts,
                                            s.asr_max_audio_s, None,
                                            diarize_options(ev, s) if j.diarize else None) for j in jobs]
        else:
            futures = [loop.run_in_executor(self.pool, transcribe_call, str(path), [j.channel for j in jobs],
                                            language, self.opts, s.asr_max_audio_s)]
        from concurrent.futures.process import BrokenProcessPool

        from pipeline.asr import AsrError
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures), timeout=s.asr_call_timeout_s)
            if len(futures) < len(jobs):
                results = results[0]
        except BrokenProcessPool as e:
            self._kill_pool()  # a worker died (out of memory, killed): start a fresh pool for the next call
            raise AsrError(f"a transcription worker died ({e}); the call can be retried") from None
        except asyncio.TimeoutError:
            self._kill_pool()  # the workers are still busy with this call: free them for the next one
            raise TimeoutError(f"transcription took longer than {s.asr_call_timeout_s:.0f}s "
                               "(CALLQA_ASR_CALL_TIMEOUT_S)") from None
        out = merge(ev, jobs, list(results), self.opts, time.perf_counter() - t0, analysis)
        if not out.segments:
            raise NoSpeechError(f"no speech found in {path.name} ({info.duration_s:.1f}s, "
                                f"{info.channels} channel(s)): silence, music or a dead line")
        return out

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            try:
                proc.kill()
            except Exception:
                pass
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
